"""VQGAN-style convolutional encoder and decoder (docs/method.md §1).

The state-dict layout (`down.{level}.block.{i}`, `mid.block_1`, `up.{level}.attn.{i}`, ...)
is the usual VQGAN one, so weights from VQGAN-family checkpoints map one to one. The MQ-VAE's
decoder has no conv_in and no middle block (the adaptive de-mask module plays that role); the
VQGAN baseline's decoder has both (`Decoder(z_channels=...)`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with `groups` groups (fewer when `channels` is not a multiple of it, for tiny models).

    32 is the VQGAN's value. With one channel per group it acts as instance norm, which removes every
    image's mean colour at that layer; narrow models (`ch` ≤ 32) learn colour badly then and want fewer
    groups (model.norm_groups).
    """
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → 3×3 conv, twice, plus a (1×1-projected) skip connection."""

    def __init__(self, in_channels: int, out_channels: int | None = None, dropout: float = 0.0,
                 norm_groups: int = 32):
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = group_norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the H·W cells of a feature map (1×1-conv projections).

    `value_weights` (B×N, optional) scales each cell's value before attention. Since
    softmax(QKᵀ)·diag(m)·V = softmax(QKᵀ)·(m⊙V), this equals multiplying the post-softmax
    weight of every key by m without renormalising — the direction-constrained attention of
    the de-mask module — while still running the fused attention kernel.
    """

    def __init__(self, channels: int, norm_groups: int = 32):
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, value_weights: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        normed = self.norm(x)
        # B×C×H×W → B×1×N×C: one head over all cells.
        q, k, v = (proj(normed).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        if value_weights is not None:
            v = v * value_weights.to(v.dtype)[:, None, :, None]
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3×3 conv with asymmetric (right/bottom) zero padding, as in VQGAN."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


# How the three taps of a 3×3 kernel along one axis fall on the two input pixels that output
# phase a (even or odd output row/column) reads after nearest ×2 upsampling: phase 0 reads input
# i-1 with tap 0 and input i with taps 1+2; phase 1 reads input i with taps 0+1 and i+1 with tap 2.
_PHASE_TAPS = (((1.0, 0.0, 0.0), (0.0, 1.0, 1.0)),
               ((1.0, 1.0, 0.0), (0.0, 0.0, 1.0)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling followed by a 3×3 conv.

    Computed without building the upsampled map: each of the four output phases (even/odd row ×
    even/odd column) is a 2×2 conv of the input whose taps are sums of the 3×3 taps reading the
    same input pixel. Same function and parameters, 16 instead of 36 multiply-adds per output
    pixel and channel pair.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        # a buffer so that it moves with the module (no host-to-device copy per call); not saved
        self.register_buffer("phase_taps", torch.tensor(_PHASE_TAPS), persistent=False)

    def phase_kernels(self) -> torch.Tensor:
        """The 2×2 kernel of every output phase: 2 (row phase) × 2 (column phase) × C_out × C_in × 2 × 2."""
        w = self.conv.weight
        taps = self.phase_taps.to(w.dtype)
        return torch.einsum("apy,oiyx,bqx->aboipq", taps, w, taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        kernels, padded = self.phase_kernels(), F.pad(x, (1, 1, 1, 1))
        # phase (a, d) reads input rows i-1+a, i+a and columns j-1+d, j+d: a window of the padded input
        rows = [torch.stack([F.conv2d(padded[:, :, a:a + h + 1, d:d + w + 1], kernels[a, d], self.conv.bias)
                             for d in (0, 1)], dim=-1) for a in (0, 1)]  # each B×C×H×W×2
        return torch.stack(rows, dim=3).reshape(b, -1, 2 * h, 2 * w)  # B×C×H×2×W×2 → B×C×2H×2W


class _Level(nn.Module):
    """One resolution level: ResNet blocks, optional attention after each, optional resampling."""

    def __init__(self, blocks: list[nn.Module], attentions: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attentions)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class Encoder(nn.Module):
    """Image (B×3×R×R) → feature map (B×z_channels×R/f×R/f), f = 2^(len(ch_mult)-1)."""

    def __init__(self, *, in_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, z_channels: int, dropout: float = 0.0,
                 norm_groups: int = 32):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        levels, block_in, res = [], ch, resolution
        for level, mult in enumerate(ch_mult):
            block_out = ch * mult
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(SpatialSelfAttention(block_in, norm_groups))
            stage = _Level(blocks, attns)
            if level != len(ch_mult) - 1:
                stage.downsample = Downsample(block_in)
                res //= 2
            levels.append(stage)
        self.down = nn.ModuleList(levels)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, norm_groups)
        self.mid.attn_1 = SpatialSelfAttention(block_in, norm_groups)
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, norm_groups)
        self.norm_out = group_norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Feature map → image.

    Without `z_channels` (the MQ-VAE's): input B×ch·ch_mult[-1]×H×W, no conv_in, no middle block.
    With `z_channels` (VQGAN's): input B×z_channels×H×W, through its own 3×3 conv_in and a middle
    block (ResNet, attention, ResNet) before the upsampling levels.
    """

    def __init__(self, *, out_channels: int, ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, dropout: float = 0.0,
                 z_channels: int | None = None, norm_groups: int = 32):
        super().__init__()
        num_levels = len(ch_mult)
        block_in = ch * ch_mult[-1]
        self.conv_in: nn.Conv2d | None = None
        self.mid: nn.Module | None = None
        if z_channels is not None:
            self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
            self.mid = nn.Module()
            self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, norm_groups)
            self.mid.attn_1 = SpatialSelfAttention(block_in, norm_groups)
            self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, norm_groups)
        res = resolution // 2 ** (num_levels - 1)
        levels: list[_Level] = []
        for level in reversed(range(num_levels)):
            block_out = ch * ch_mult[level]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, dropout, norm_groups))
                block_in = block_out
                if res in attn_resolutions:
                    attns.append(SpatialSelfAttention(block_in, norm_groups))
            stage = _Level(blocks, attns)
            if level != 0:
                stage.upsample = Upsample(block_in)
                res *= 2
            levels.insert(0, stage)  # up[0] is the full-resolution level
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.conv_in is not None:
            h = self.conv_in(h)
            h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for stage in reversed(self.up):
            h = stage(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
