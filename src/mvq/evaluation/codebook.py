"""How much of the codebook a tokenizer uses: share of codes used and perplexity."""

from __future__ import annotations

import math

import torch

from mvq.errors import InvalidInputError


def code_counts(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """How often each code occurs in `codes` (any shape): a (codebook_size,) int64 tensor."""
    flat = codes.reshape(-1).long()
    counts = torch.bincount(flat, minlength=codebook_size)
    if counts.numel() > codebook_size or (flat.numel() and flat.min() < 0):
        raise ValueError(f"codes must lie in [0, {codebook_size}), got values in "
                         f"[{int(flat.min())}, {int(flat.max())}]")
    return counts


def codebook_usage_from_counts(counts: torch.Tensor) -> dict[str, float]:
    """`usage_percent`: share of codes used at least once; `perplexity`: exp(entropy) of the code
    frequencies (= number of codes if all were used equally often); `used_codes`; `codebook_size`."""
    counts = counts.to(torch.float64)
    total = counts.sum()
    if total <= 0:
        raise InvalidInputError("no codes were counted")
    p = counts / total
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()
    used = int((counts > 0).sum())
    return {"usage_percent": 100.0 * used / counts.numel(), "perplexity": math.exp(float(entropy)),
            "used_codes": used, "codebook_size": counts.numel()}


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Codebook usage statistics of a set of codes (see `codebook_usage_from_counts`)."""
    return codebook_usage_from_counts(code_counts(codes, codebook_size))
