"""Small metrics computed during training."""

from __future__ import annotations

import torch


def codebook_usage(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(% of codes used at least once, perplexity exp(H)) from per-code counts."""
    total = counts.sum().clamp_min(1)
    p = counts / total
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return (counts > 0).float().mean() * 100, torch.exp(entropy)
