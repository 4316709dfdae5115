"""Finding pretrained weight files offline (VGG16 for LPIPS, Inception for FID).

Where there is internet the libraries download these themselves. Where there is none, the
file must already be on disk: at an explicit path, or in the torch hub cache
(`$TORCH_HOME/hub/checkpoints/`, by default `~/.cache/torch/hub/checkpoints/`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class MissingWeightsError(FileNotFoundError):
    """A required pretrained weight file is not on disk; the message says where to put it."""


@dataclass(frozen=True)
class WeightsFile:
    """A pretrained file we know by name: what it is for and where it comes from."""

    filename: str
    purpose: str
    url: str
    option: str  # the command-line option / config key that takes an explicit path


VGG16 = WeightsFile(
    filename="vgg16-397923af.pth",
    purpose="VGG16 backbone of the LPIPS perceptual loss/metric",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    option="--vgg-weights / loss.vgg_weights",
)
INCEPTION = WeightsFile(
    filename="weights-inception-2015-12-05-6726825d.pth",
    purpose="Inception-v3 (FID/IS feature extractor of torch-fidelity)",
    url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    option="--inception-weights",
)


def hub_checkpoint_dir() -> Path:
    """The torch hub cache folder for checkpoints (respects TORCH_HOME)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def locate(weights: WeightsFile, explicit: str | os.PathLike | None = None) -> Path:
    """Return the path of `weights`: the explicit path if given, else the torch hub cache copy.

    Raises MissingWeightsError naming the file, where it comes from and where to put it.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        raise MissingWeightsError(
            f"{weights.purpose}: the file given as {path} does not exist. "
            f"Download {weights.filename} from {weights.url} and pass its path ({weights.option}).")
    cached = hub_checkpoint_dir() / weights.filename
    if cached.is_file():
        return cached
    raise MissingWeightsError(
        f"{weights.purpose}: weight file {weights.filename} not found. This machine cannot download it; "
        f"get it from {weights.url} and put it at {cached} (the torch hub cache), "
        f"or pass its path with {weights.option}.")
