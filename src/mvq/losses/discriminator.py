"""PatchGAN discriminator (pix2pix / VQGAN): one real-vs-fake logit per overlapping patch.

Layout for `n_layers` = 3 and `channels` = 64, input 3×256×256:

    stem      4×4 conv stride 2, 3 -> 64, LeakyReLU(0.2)                        -> 128×128
    blocks.0  4×4 conv stride 2, 64 -> 128 (no bias), BatchNorm, LeakyReLU      ->  64×64
    blocks.1  4×4 conv stride 2, 128 -> 256 (no bias), BatchNorm, LeakyReLU     ->  32×32
    blocks.2  4×4 conv stride 1, 256 -> 512 (no bias), BatchNorm, LeakyReLU     ->  31×31
    head      4×4 conv stride 1, 512 -> 1                                        ->  30×30

Channels double per block up to 8× `channels`. Weights start as in VQGAN: conv weights
N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0.

The reference implementation keeps the same layers in one `nn.Sequential` called `main`
(activations included), stored under `loss.discriminator.main.<index>.*` in its checkpoints;
`mvq.convert.losses` maps those keys to ours.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

KERNEL = 4
PADDING = 1
NEGATIVE_SLOPE = 0.2
MAX_CHANNEL_MULT = 8


class DiscriminatorBlock(nn.Module):
    """4×4 conv (no bias: BatchNorm follows) -> BatchNorm -> LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, KERNEL, stride, PADDING, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.norm(self.conv(x)), NEGATIVE_SLOPE)


class PatchDiscriminator(nn.Module):
    """Maps B×C×H×W images to B×1×h×w logits (positive = judged real)."""

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"a PatchGAN discriminator needs at least 1 layer, got n_layers={n_layers}")
        self.stem = nn.Conv2d(in_channels, channels, KERNEL, 2, PADDING)
        widths = [channels * min(2 ** i, MAX_CHANNEL_MULT) for i in range(n_layers + 1)]
        self.blocks = nn.ModuleList(
            DiscriminatorBlock(widths[i], widths[i + 1], stride=2 if i < n_layers - 1 else 1)
            for i in range(n_layers))
        self.head = nn.Conv2d(widths[-1], 1, KERNEL, 1, PADDING)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """VQGAN's initialisation (conv biases keep PyTorch's default, as there)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.stem(images), NEGATIVE_SLOPE)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> "PatchDiscriminator":
        """A discriminator holding `state_dict` (our keys), its depth and widths inferred from the weights."""
        n_layers = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
        model = cls(in_channels=state_dict["stem.weight"].shape[1], channels=state_dict["stem.weight"].shape[0],
                    n_layers=n_layers)
        model.load_state_dict(state_dict, strict=True)
        return model
