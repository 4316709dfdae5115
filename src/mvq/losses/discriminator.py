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
`discriminator_from_original` maps those keys to ours.
"""

from __future__ import annotations

import re
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
    def from_original(cls, state_dict: Mapping[str, torch.Tensor]) -> "PatchDiscriminator":
        """A discriminator holding the weights of a reference checkpoint (shapes inferred)."""
        ours = discriminator_from_original(state_dict)
        n_layers = len({key.split(".")[1] for key in ours if key.startswith("blocks.")})
        model = cls(in_channels=ours["stem.weight"].shape[1], channels=ours["stem.weight"].shape[0],
                    n_layers=n_layers)
        model.load_state_dict(ours, strict=True)
        return model


ORIGINAL_PREFIX = "loss.discriminator."
_ORIGINAL_KEY = re.compile(r"main\.(\d+)\.(.+)")


def discriminator_from_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map reference discriminator weights (`[loss.discriminator.]main.<i>.*`) to our keys.

    Accepts a whole reference checkpoint state dict (only `loss.discriminator.*` is read) or
    the discriminator's own. In the reference `main` sequence, index 0 is the stem conv and
    the last index the head conv; each block in between takes three indices (conv, norm,
    activation), so block b has its conv at 2 + 3b and its norm at 3 + 3b.
    """
    if any(key.startswith(ORIGINAL_PREFIX) for key in state_dict):
        state_dict = {key[len(ORIGINAL_PREFIX):]: value for key, value in state_dict.items()
                      if key.startswith(ORIGINAL_PREFIX)}
    parsed = {}
    for key, value in state_dict.items():
        match = _ORIGINAL_KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"unexpected reference discriminator key {key!r}: expected main.<index>.<name>")
        parsed[(int(match.group(1)), match.group(2))] = value
    if not parsed:
        raise ValueError("no reference discriminator weights found (keys loss.discriminator.main.* or main.*)")
    indices = sorted({index for index, _ in parsed})
    last = indices[-1]
    if last < 2 or (last - 2) % 3:
        raise ValueError(f"reference discriminator layout not recognised: last layer index {last} "
                         "(a PatchGAN with n layers ends at index 2 + 3n)")
    n_layers = (last - 2) // 3
    ours = {}
    for (index, name), value in parsed.items():
        if index == 0:
            ours[f"stem.{name}"] = value
        elif index == last:
            ours[f"head.{name}"] = value
        elif (index - 2) % 3 == 0:
            ours[f"blocks.{(index - 2) // 3}.conv.{name}"] = value
        elif (index - 3) % 3 == 0 and (index - 3) // 3 < n_layers:
            if name in ("loc", "scale", "initialized"):
                raise ValueError("the reference discriminator uses ActNorm (use_actnorm=True); "
                                 "only the BatchNorm variant is supported")
            ours[f"blocks.{(index - 3) // 3}.norm.{name}"] = value
        else:
            raise ValueError(f"reference key main.{index}.{name} belongs to no layer of a "
                             f"{n_layers}-layer PatchGAN (activations have no weights)")
    return ours
