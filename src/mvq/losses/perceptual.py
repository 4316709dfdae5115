"""LPIPS perceptual distance (VGG16 trunk) that never touches the network.

The `lpips` package ships its calibrated linear layers; the VGG16 trunk it would normally
download through torchvision is loaded here from a local file found by `mvq.weights`.
Used as a training loss (gradients flow to the images) and as an evaluation metric.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from mvq.weights import VGG16, locate


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance; `forward(x, y)` takes images in [-1, 1] and returns (B,) distances.

    The module stays in eval mode even when a parent calls `.train()`: the package's linear
    layers carry dropout, which would make the loss random.
    """

    def __init__(self, vgg_weights: str | os.PathLike | None = None):
        super().__init__()
        path = locate(VGG16, vgg_weights)
        trunk_state = _read_vgg16_features(path)  # check the file before building anything
        import lpips

        with warnings.catch_warnings():
            # torchvision warns about the legacy `pretrained=` argument lpips passes.
            warnings.simplefilter("ignore", UserWarning)
            # pnet_rand=True: build the trunk without downloading; its weights are loaded below.
            net = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)
        _load_vgg16_trunk(net.net, trunk_state)
        self.net = net
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two B×3×H×W image batches of the same shape, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        return self.net(x, y).reshape(x.shape[0])


def _read_vgg16_features(path: Path) -> dict[str, torch.Tensor]:
    """The `features.N.{weight,bias}` tensors of a torchvision VGG16 state dict file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read the VGG16 weights file {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    expected = {f"features.{i}.{kind}": shape for i, shape in _VGG16_CONV_SHAPES.items()
                for kind, shape in (("weight", shape), ("bias", shape[:1]))}
    for key, shape in expected.items():
        found = state.get(key)
        if found is None or tuple(found.shape) != shape:
            what = "missing" if found is None else f"of shape {tuple(found.shape)}"
            raise ValueError(f"{path} is not a torchvision VGG16 state dict ({key} is {what}, expected {shape}); "
                             f"use {VGG16.filename} from {VGG16.url}")
    return {key: state[key] for key in expected}


# torchvision VGG16 `features` conv layers by index: (out, in, 3, 3)
_VGG16_CONV_SHAPES = {
    i: (out, inp, 3, 3) for i, (out, inp) in zip(
        (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        ((64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
         (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)))
}


def _load_vgg16_trunk(trunk: nn.Module, features: dict[str, torch.Tensor]) -> None:
    """Copy torchvision's `features.N.*` weights into lpips' sliced trunk (`sliceK.N.*`)."""
    mapped = {}
    for name in trunk.state_dict():
        _slice, layer, kind = name.split(".")
        mapped[name] = features[f"features.{layer}.{kind}"]
    trunk.load_state_dict(mapped, strict=True)
