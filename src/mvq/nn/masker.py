"""Adaptive mask module (design §2.2): score every cell, keep the top K, weight them by score.

This is where the mask is chosen: `AdaptiveMasker.forward` ranks the cells by the score
network's output and keeps the K best, the same number for every image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class ScoreNetwork(nn.Module):
    """LayerNorm over (C,H,W) → 3×3 conv → ReLU → 1×1 conv → BatchNorm(1) → sigmoid: one score per cell."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, 1, 1)
        self.norm = nn.BatchNorm2d(1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(h, h.shape[1:])
        h = self.conv2(F.relu(self.conv1(h)))
        return torch.sigmoid(self.norm(h)).flatten(1)  # B×N


@dataclass
class MaskerOutput:
    features: torch.Tensor   # B×K×codebook_dim, kept cells (score-weighted, projected)
    positions: torch.Tensor  # B×K long, ascending indices into the H·W cells
    keep_mask: torch.Tensor  # B×N bool
    scores: torch.Tensor     # B×N in (0, 1)


class AdaptiveMasker(nn.Module):
    """Keeps the `num_tokens` highest-scoring cells of an encoder feature map."""

    def __init__(self, channels: int, codebook_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.score_net = ScoreNetwork(channels)
        self.project = nn.Linear(channels, codebook_dim, bias=False)

    def forward(self, h: torch.Tensor) -> MaskerOutput:
        b, c = h.shape[:2]
        scores = self.score_net(h)
        # Ranking uses detached scores; the kept features are multiplied by the live scores below,
        # which is the only path by which the score network receives gradient.
        top = scores.detach().topk(self.num_tokens, dim=1).indices
        positions = top.sort(dim=1).values
        tokens = h.flatten(2).transpose(1, 2)  # B×N×C
        kept = tokens.gather(1, positions.unsqueeze(-1).expand(-1, -1, c))
        kept = F.layer_norm(kept, (c,)) * scores.gather(1, positions).unsqueeze(-1)
        keep_mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, positions, True)
        return MaskerOutput(self.project(kept), positions, keep_mask, scores)
