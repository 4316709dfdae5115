"""The FID/IS feature network: torch-fidelity's port of the TensorFlow FID Inception-v3.

Its weights are found offline through `mvq.storage.network_weights` (explicit path, $MVQ_WEIGHTS_DIR or the
torch hub cache) and read as tensors only: torch-fidelity's own file with
`torch.load(weights_only=True)`, the registry-package conversion from safetensors.
torch-fidelity is never asked to read or download a file itself (it would unpickle with
`weights_only=False`). The converted network has no classification head: it gives FID/KID
features, and `has_logits` is False (no Inception Score).

The network's weights are kept channels-last: oneDNN then runs its convolutions and poolings in that
layout, which on a CPU ran 1.2–1.7× faster than the default layout with the same features to float
rounding (`benchmarks/bench_inception.py` times both side by side).
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from unittest import mock

import torch
from torch import nn

from mvq.storage.network_weights import INCEPTION, WeightsFileError, locate, read_state

POOL_FEATURES = "2048"          # FID / KID features (pool3)
LOGITS_FEATURES = "logits_unbiased"  # Inception Score logits, as torch-fidelity computes IS
FEATURE_DIM = 2048
HEAD_KEYS = ("fc.weight", "fc.bias")
_BUILD_LOCK = threading.Lock()


def build_fidelity_inception(state: dict[str, torch.Tensor] | None, features: list[str]) -> nn.Module:
    """torch-fidelity's FeatureExtractorInceptionV3 holding `state` (strictly loaded), built without file access.

    A state without the classification head gets a NaN head, so logits asked of it could never
    pass for real ones; callers then ask only for pool features. `state=None` gives the bare
    structure with its initial weights (to map names and shapes onto).
    """
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    if state is not None:
        state = dict(state)
        if not all(key in state for key in HEAD_KEYS):
            state["fc.weight"] = torch.full((1008, FEATURE_DIM), float("nan"))
            state["fc.bias"] = torch.full((1008,), float("nan"))
    # torch-fidelity reads its weights inside __init__, from a path (with weights_only=False) or from
    # its URL; hand it the tensors read here instead, through the URL loader it would call.
    with _BUILD_LOCK, contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(fidelity, "load_state_dict_from_url", lambda *a, **k: state))
        if state is None:
            stack.enter_context(mock.patch.object(fidelity.FeatureExtractorInceptionV3, "load_state_dict",
                                                  lambda self, *a, **k: None))
        return fidelity.FeatureExtractorInceptionV3("inception-v3-compat", features)


def read_inception_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an Inception weight file (torch-fidelity .pth or converted .safetensors), checked."""
    state = read_state(path, "Inception weights")
    if not isinstance(state, dict) or "Conv2d_1a_3x3.conv.weight" not in state:
        raise WeightsFileError(f"{path} is not torch-fidelity's Inception weights file {INCEPTION.filename} "
                               f"({INCEPTION.url}) nor its conversion {INCEPTION.converted}")
    return state


class InceptionV3(nn.Module):
    """uint8 images B×3×H×W (any size; resized to 299 inside, like TF) → (pool B×2048, logits B×1008 or None)."""

    feature_dim = FEATURE_DIM

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__()
        path = locate(INCEPTION, weights)
        state = read_inception_state(path)
        self.has_logits = all(key in state for key in HEAD_KEYS)
        self.features = [POOL_FEATURES, LOGITS_FEATURES] if self.has_logits else [POOL_FEATURES]
        try:
            self.net = build_fidelity_inception(state, self.features)
        except (RuntimeError, KeyError) as exc:
            raise WeightsFileError(f"{path} is not torch-fidelity's Inception weights file {INCEPTION.filename} "
                                   f"({INCEPTION.url}): {exc}") from None
        self.weights_path = path
        self.net.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    @property
    def missing_logits_message(self) -> str:
        """One line saying why there is no Inception Score and which file would give one."""
        return (f"Inception Score unavailable: {self.weights_path.name} has no classification head; IS needs "
                f"torch-fidelity's {INCEPTION.filename} ({INCEPTION.url})")

    def train(self, mode: bool = True) -> "InceptionV3":
        return super().train(False)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Inception features take uint8 images B×3×H×W, got {images.dtype} "
                             f"{tuple(images.shape)}; convert [-1, 1] floats with mvq.evaluation.to_uint8")
        outputs = self.net(images)
        return outputs[0], (outputs[1] if self.has_logits else None)
