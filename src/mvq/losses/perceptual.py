"""LPIPS perceptual distance (VGG16 or AlexNet trunk) that never touches the network.

The `lpips` package ships its calibrated linear layers (version 0.1); the ImageNet trunk it
would normally download through torchvision is loaded here from a local file found by
`mvq.storage.network_weights`: torchvision's own state dict (read with `weights_only=True`) or the same
`features.N.*` tensors converted from a registry package (safetensors).
Used as a training loss (gradients flow to the images) and as an evaluation metric.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from mvq.storage.network_weights import ALEXNET, VGG16, WeightsFile, WeightsFileError, locate, read_state

NETS = ("vgg", "alex")


def _conv_shapes(layers: dict[int, tuple[int, int, int]]) -> dict[str, tuple[int, ...]]:
    """`features.N.{weight,bias}` shapes from {index: (out, in, kernel)}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (out, inp, k) in layers.items():
        shapes[f"features.{index}.weight"] = (out, inp, k, k)
        shapes[f"features.{index}.bias"] = (out,)
    return shapes


# torchvision `features` conv layers by index: (out, in, kernel)
TRUNK_SHAPES = {
    "vgg": _conv_shapes({i: (out, inp, 3) for i, (out, inp) in zip(
        (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        ((64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
         (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)))}),
    "alex": _conv_shapes({0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}),
}
TRUNK_WEIGHTS: dict[str, WeightsFile] = {"vgg": VGG16, "alex": ALEXNET}


class LPIPS(nn.Module):
    """Frozen LPIPS distance; `forward(x, y)` takes images in [-1, 1] and returns (B,) distances.

    `net` is the trunk: "vgg" (the training loss and mvq's default metric) or "alex" (the
    LPIPS authors' default metric). The module stays in eval mode even when a parent calls
    `.train()`: the package's linear layers carry dropout, which would make the loss random.
    """

    def __init__(self, weights: str | os.PathLike | None = None, net: str = "vgg"):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"unknown LPIPS trunk {net!r}; choose one of {', '.join(NETS)}")
        path = locate(TRUNK_WEIGHTS[net], weights)
        trunk_state = read_trunk(path, net)  # check the file before building anything
        import lpips

        with warnings.catch_warnings():
            # torchvision warns about the legacy `pretrained=` argument lpips passes.
            warnings.simplefilter("ignore", UserWarning)
            # pnet_rand=True: build the trunk without downloading; its weights are loaded below.
            model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        _load_trunk(model.net, trunk_state)
        self.net = model
        self.trunk = net
        self.weights_path = path
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS expects two B×3×H×W image batches of the same shape, got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        return self.net(x, y).reshape(x.shape[0])


def read_trunk(path: Path, net: str) -> dict[str, torch.Tensor]:
    """The `features.N.{weight,bias}` tensors of a torchvision VGG16/AlexNet file (or its conversion), checked."""
    weights = TRUNK_WEIGHTS[net]
    state = read_state(path, weights.purpose)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsFileError(f"{path} does not hold a state dict")
    name = {"vgg": "VGG16", "alex": "AlexNet"}[net]
    for key, shape in TRUNK_SHAPES[net].items():
        found = state.get(key)
        if not isinstance(found, torch.Tensor) or tuple(found.shape) != shape:
            what = "missing" if found is None else f"of shape {tuple(getattr(found, 'shape', ()))}"
            raise WeightsFileError(f"{path} is not a torchvision {name} state dict ({key} is {what}, expected "
                                   f"{shape}); use {weights.filename} from {weights.url} or `mvq weights install`")
    return {key: state[key].float() for key in TRUNK_SHAPES[net]}


def _load_trunk(trunk: nn.Module, features: dict[str, torch.Tensor]) -> None:
    """Copy torchvision's `features.N.*` weights into lpips' sliced trunk (`sliceK.N.*`)."""
    mapped = {}
    for name in trunk.state_dict():
        _slice, layer, kind = name.split(".")
        mapped[name] = features[f"features.{layer}.{kind}"]
    trunk.load_state_dict(mapped, strict=True)
