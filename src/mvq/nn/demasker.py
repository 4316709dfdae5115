"""Adaptive de-mask module (docs/method.md §4): rebuild the full H×W feature map from the K kept codes.

Masked cells start as one shared learnable mask token. Direction-constrained attention lets
information flow from kept to masked cells first: the weight of every masked key starts at
`mask_init_value` and grows (its square root is taken) after each block.

Two ablations (docs/method.md §8) switch parts of this off: `attention="plain"` gives every key
weight 1 (ordinary attention), and `mask_update="constant"` keeps the masked keys' weight at
`mask_init_value` in every block.
"""

from __future__ import annotations

import torch
from torch import nn

from mvq.nn.vqgan import ResnetBlock, SpatialSelfAttention

DEMASK_ATTENTIONS = ("direction_constrained", "plain")
MASK_UPDATES = ("sqrt", "constant")


class DirectionConstrainedAttention(SpatialSelfAttention):
    """Spatial attention whose post-softmax key weights are scaled by per-key weights m (no renormalisation).

    `key_weights=None` is ordinary attention (every key weight 1).
    """

    def forward(self, x: torch.Tensor, key_weights: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x, value_weights=key_weights)


class DemaskBlock(nn.Module):
    """ResNet block followed by direction-constrained attention."""

    def __init__(self, channels: int, norm_groups: int = 32):
        super().__init__()
        self.res = ResnetBlock(channels, norm_groups=norm_groups)
        self.attn = DirectionConstrainedAttention(channels, norm_groups)

    def forward(self, x: torch.Tensor, key_weights: torch.Tensor | None) -> torch.Tensor:
        return self.attn(self.res(x), key_weights)


class AdaptiveDemasker(nn.Module):
    """(K quantized vectors, their positions) → B×out_channels×H×W feature map for the decoder.

    `attention`: "direction_constrained" (masked keys weighted by m) or "plain" (all weights 1).
    `mask_update`: "sqrt" (m ← √m after each block) or "constant" (m stays `mask_init_value`).
    `norm_groups`: GroupNorm groups, as in the decoder it feeds.
    """

    def __init__(self, codebook_dim: int, out_channels: int, grid_size: int, num_layers: int,
                 mask_init_value: float = 0.02, attention: str = "direction_constrained",
                 mask_update: str = "sqrt", norm_groups: int = 32):
        super().__init__()
        if attention not in DEMASK_ATTENTIONS:
            raise ValueError(f"attention must be one of {DEMASK_ATTENTIONS}, got {attention!r}")
        if mask_update not in MASK_UPDATES:
            raise ValueError(f"mask_update must be one of {MASK_UPDATES}, got {mask_update!r}")
        self.grid_size = grid_size
        self.mask_init_value = mask_init_value
        self.attention, self.mask_update = attention, mask_update
        self.mask_token = nn.Parameter(torch.empty(codebook_dim).uniform_(-1.0 / codebook_dim, 1.0 / codebook_dim))
        self.project_in = nn.Conv2d(codebook_dim, out_channels, 1)
        self.conv_in = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.blocks = nn.ModuleList(DemaskBlock(out_channels, norm_groups) for _ in range(num_layers))
        self.final_res = ResnetBlock(out_channels, norm_groups=norm_groups)

    def key_weights(self, keep_mask: torch.Tensor) -> torch.Tensor:
        """Initial per-key weights m: 1 for kept cells, `mask_init_value` for masked ones (B×N)."""
        return torch.where(keep_mask, 1.0, self.mask_init_value).float()

    def forward(self, quantized: torch.Tensor, positions: torch.Tensor, keep_mask: torch.Tensor) -> torch.Tensor:
        b, _, d = quantized.shape
        n = self.grid_size * self.grid_size
        mask_token = self.mask_token.to(quantized.dtype)
        canvas = mask_token.expand(b, n, d).scatter(1, positions.unsqueeze(-1).expand(-1, -1, d), quantized)
        # With per-image budgets an image's positions may hold cells beyond its own keep mask: those
        # become mask tokens again (with one budget for all, this changes nothing).
        canvas = torch.where(keep_mask.reshape(b, n, 1), canvas, mask_token)
        x = canvas.transpose(1, 2).reshape(b, d, self.grid_size, self.grid_size)
        x = self.conv_in(self.project_in(x))
        weights = self.key_weights(keep_mask.reshape(b, n)) if self.attention == "direction_constrained" else None
        for block in self.blocks:
            x = block(x, weights)
            if weights is not None and self.mask_update == "sqrt":
                weights = weights.sqrt()
        return self.final_res(x)
