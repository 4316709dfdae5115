"""The datasets that evaluation reads, built through `mvq.data` with evaluation transforms."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch


def evaluation_dataset(data: str | os.PathLike, resolution: int | None, split: str = "val") -> torch.utils.data.Dataset:
    """Items {"image": 3×R×R in [-1, 1], "label"} from an image folder or a YAML config's `data:` section.

    Images are resized and centre-cropped to `resolution` (no random crops or flips); a config's
    own `data.resolution` is used when `resolution` is None (a folder needs one).
    """
    from mvq.config import ConfigError, build_dataclass, load_yaml
    from mvq.data import DataConfig, build_dataset, folder_dataset

    path = Path(data)
    if path.is_dir():
        if resolution is None:
            raise ValueError(f"reading the image folder {path} needs a resolution (--resolution R)")
        return folder_dataset(path, resolution, train=split == "train", augment=False)
    if not path.is_file():
        raise FileNotFoundError(f"--data {data}: no such config file or image folder")
    section = load_yaml(path).get("data")
    if not isinstance(section, dict):
        raise ConfigError(f"{path} has no 'data:' section to build the dataset from")
    config = build_dataclass(DataConfig, section, "data")
    if resolution is not None:
        config = dataclasses.replace(config, resolution=resolution)
    return build_dataset(config, split, augment=False)
