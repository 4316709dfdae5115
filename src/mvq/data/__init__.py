"""Datasets: ImageNet, FFHQ, any image folder, torchvision's dataset classes, crops of photos,
and the built-in synthetic shapes; token stores (`mvq.data.token_store`).

`DataConfig` is the `data:` section of a training config; `build_dataset(config, split)`
returns the matching torch Dataset, and `dataset_from_path` the one a command's `--data`
(folder or config file) names. Every folder is walked by `mvq.data.discovery.list_files`. Items are {"image": 3×R×R float tensor in [-1, 1],
"label": int (-1 without classes)}. The heavy modules are imported on first use, so reading
a config does not import torch.
"""

from __future__ import annotations

import importlib

from mvq.data.config import DataConfig

_LAZY = {
    "build_dataset": "mvq.data.build",
    "dataset_from_path": "mvq.data.build",
    "list_files": "mvq.data.discovery",
    "FolderLinkWarning": "mvq.data.discovery",
    "photo_crops_dataset": "mvq.data.photos",
    "torchvision_dataset": "mvq.data.torchvision_sets",
    "folder_dataset": "mvq.data.layouts",
    "imagenet_dataset": "mvq.data.layouts",
    "ffhq_dataset": "mvq.data.layouts",
    "ImageFileDataset": "mvq.data.files",
    "SyntheticShapes": "mvq.data.synthetic",
    "SHAPE_KINDS": "mvq.data.synthetic",
    "SkippedFilesWarning": "mvq.data.images",
    "load_rgb": "mvq.data.images",
    "to_rgb": "mvq.data.images",
}

__all__ = ["DataConfig", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mvq.data' has no attribute {name!r}")
