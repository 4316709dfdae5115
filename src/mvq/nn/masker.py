"""Mask modules (docs/method.md §2, §8): choose the K cells of the encoder map that become tokens.

This is where the mask is chosen: `AdaptiveMasker.forward`. It ranks the cells by a learned
score network and keeps the K best, the same number for every image of a call. A call may ask
for another K than the model's (`keep`): the kept cells are then a prefix of one ranking of all
cells, so the tokens at any budget are a subset of those at every larger budget (any-K). `RandomMasker` is its
ablation: a random ranking per image, same K, no score network — what the adaptive choice is
measured against. The switch between them is `build_masker`, set by `model.mask_choice`
(`adaptive` | `random`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MASK_CHOICES = ("adaptive", "random")


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
    keep_mask: torch.Tensor  # B×N bool: the cells kept (per image fewer than K with per-image budgets)
    scores: torch.Tensor     # B×N in (0, 1)


# A keep budget: one count for every image of a call, or a B-long tensor of counts, one per image.
Budget = int | torch.Tensor


def select_cells(scores: torch.Tensor, keep: Budget) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions B×K ascending, keep mask B×N) of the best `keep` cells of one stable ranking.

    With per-image counts, K is the largest count and every image's positions hold its own count's
    cells followed, in the same ascending list, by the next-ranked ones up to K; the keep mask marks
    only its own. The cells kept at any budget are a subset of those at every larger one.
    """
    if isinstance(keep, int):
        positions = ranked_prefix(scores, keep).sort(dim=1).values
        return positions, keep_mask_from_positions(positions, scores.shape[1])
    top = ranked_prefix(scores, int(keep.max()))  # best first
    within = torch.arange(top.shape[1], device=top.device) < keep.to(top.device)[:, None]
    positions, order = top.sort(dim=1)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, positions, within.gather(1, order))
    return positions, keep_mask


def ranked_prefix(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The `keep` highest-scoring cells (B×keep indices, best first), a prefix of one stable ranking of all
    cells: ties go to the lower cell index, so a smaller budget always keeps a subset of a larger one."""
    return scores.argsort(dim=1, descending=True, stable=True)[:, :keep]


def check_keep(keep: Budget, num_cells: int) -> Budget:
    """A keep count as an int in 1..num_cells (or a tensor of such counts, one per image), or ValueError."""
    if isinstance(keep, torch.Tensor):
        if keep.dim() != 1 or keep.dtype.is_floating_point or bool(((keep < 1) | (keep > num_cells)).any()):
            raise ValueError(f"per-image keep counts must be a 1-D integer tensor of counts in 1..{num_cells}")
        return keep
    if isinstance(keep, bool) or int(keep) != keep or not 1 <= keep <= num_cells:
        raise ValueError(f"keep must be a whole number of cells in 1..{num_cells}, got {keep!r}")
    return int(keep)


def keep_mask_from_positions(positions: torch.Tensor, num_cells: int) -> torch.Tensor:
    """B×N boolean mask that is True at the B×K `positions`."""
    keep_mask = torch.zeros(positions.shape[0], num_cells, dtype=torch.bool, device=positions.device)
    return keep_mask.scatter_(1, positions, True)


class AdaptiveMasker(nn.Module):
    """Keeps the `num_tokens` highest-scoring cells of an encoder feature map."""

    def __init__(self, channels: int, codebook_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.score_net = ScoreNetwork(channels)
        self.project = nn.Linear(channels, codebook_dim, bias=False)

    def forward(self, h: torch.Tensor, keep: Budget | None = None) -> MaskerOutput:
        """Keep the model's K cells, or the best `keep` (a prefix of the ranking of every cell; one count,
        or one per image)."""
        b, c = h.shape[:2]
        scores = self.score_net(h)
        # Ranking uses detached scores; the kept features are multiplied by the live scores below,
        # which is the only path by which the score network receives gradient.
        if keep is None:
            positions = scores.detach().topk(self.num_tokens, dim=1).indices.sort(dim=1).values
            keep_mask = keep_mask_from_positions(positions, scores.shape[1])
        else:
            positions, keep_mask = select_cells(scores.detach(), check_keep(keep, scores.shape[1]))
        tokens = h.flatten(2).transpose(1, 2)  # B×N×C
        kept = tokens.gather(1, positions.unsqueeze(-1).expand(-1, -1, c))
        kept = F.layer_norm(kept, (c,)) * scores.gather(1, positions).unsqueeze(-1)
        return MaskerOutput(self.project(kept), positions, keep_mask, scores)


class RandomMasker(nn.Module):
    """Keeps `num_tokens` cells chosen uniformly at random, independently for every image and every call.

    The ranking is drawn from torch's global random generator in training and evaluation alike
    (a random mask has no "eval" version), so seeding torch makes tokenization and evaluation
    reproducible. The drawn uniforms are returned as `scores` (for the same visualisations as
    the adaptive masker); kept tokens are layer-normalised and projected but not weighted by them.
    """

    def __init__(self, channels: int, codebook_dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.project = nn.Linear(channels, codebook_dim, bias=False)

    def forward(self, h: torch.Tensor, keep: Budget | None = None) -> MaskerOutput:
        b, c = h.shape[:2]
        scores = torch.rand(b, h.shape[2] * h.shape[3], device=h.device)
        if keep is None:
            positions = scores.topk(self.num_tokens, dim=1).indices.sort(dim=1).values
            keep_mask = keep_mask_from_positions(positions, scores.shape[1])
        else:
            positions, keep_mask = select_cells(scores, check_keep(keep, scores.shape[1]))
        tokens = h.flatten(2).transpose(1, 2)  # B×N×C
        kept = F.layer_norm(tokens.gather(1, positions.unsqueeze(-1).expand(-1, -1, c)), (c,))
        return MaskerOutput(self.project(kept), positions, keep_mask, scores)


def build_masker(choice: str, channels: int, codebook_dim: int, num_tokens: int) -> AdaptiveMasker | RandomMasker:
    """The masker named by `choice` ("adaptive" or "random")."""
    if choice not in MASK_CHOICES:
        raise ValueError(f"mask choice must be one of {MASK_CHOICES}, got {choice!r}")
    masker_class = AdaptiveMasker if choice == "adaptive" else RandomMasker
    return masker_class(channels, codebook_dim, num_tokens)
