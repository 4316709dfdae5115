"""The FID/IS feature network: torch-fidelity's port of the TensorFlow FID Inception-v3.

Its weights are found offline through `mvq.weights` (explicit path or torch hub cache);
torch-fidelity is never asked to download them.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from mvq.weights import INCEPTION, locate

POOL_FEATURES = "2048"          # FID / KID features (pool3)
LOGITS_FEATURES = "logits_unbiased"  # Inception Score logits, as torch-fidelity computes IS
FEATURE_DIM = 2048


class InceptionV3(nn.Module):
    """uint8 images B×3×H×W (any size; resized to 299 inside, like TF) → (pool B×2048, logits B×1008)."""

    feature_dim = FEATURE_DIM

    def __init__(self, weights: str | os.PathLike | None = None):
        super().__init__()
        path = locate(INCEPTION, weights)
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", [POOL_FEATURES, LOGITS_FEATURES], feature_extractor_weights_path=str(path))
        except (RuntimeError, KeyError, EOFError, OSError, ValueError) as exc:
            raise ValueError(f"{path} is not torch-fidelity's Inception weights file "
                             f"{INCEPTION.filename} ({INCEPTION.url}): {exc}") from exc
        self.weights_path = path
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "InceptionV3":
        return super().train(False)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"Inception features take uint8 images B×3×H×W, got {images.dtype} "
                             f"{tuple(images.shape)}; convert [-1, 1] floats with mvq.evaluation.to_uint8")
        pool, logits = self.net(images)
        return pool, logits
