"""`build_dataset`: the dataset a `data:` config section describes."""

from __future__ import annotations

from torch.utils.data import Dataset, Subset

from mvq.data.config import DataConfig
from mvq.data.images import evenly_spaced
from mvq.data.layouts import SPLITS, ffhq_dataset, folder_dataset, imagenet_dataset
from mvq.data.synthetic import SyntheticShapes


def build_dataset(config: DataConfig, split: str, augment: bool | None = None) -> Dataset:
    """The `split` ("train" or "val") of the configured dataset.

    Items are {"image": float32 3×R×R in [-1, 1], "label": int, -1 without classes}; synthetic
    items also carry "mask". `augment` (default: split == "train") turns on the random crops
    and flips of training; pass False to read training images the way they are evaluated
    (e.g. to tokenize a dataset). `data.max_val_images` limits the validation split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    augment = split == "train" if augment is None else augment
    limit = config.max_val_images if split == "val" else None
    if config.dataset == "synthetic":
        size = config.num_train if split == "train" else config.num_val
        dataset = SyntheticShapes(size, config.resolution, config.seed, split)
        return dataset if limit is None or limit >= size else Subset(dataset, evenly_spaced(size, limit).tolist())
    common = dict(horizontal_flip=config.horizontal_flip, max_images=limit, check=config.check_images,
                  num_threads=max(1, config.num_workers))
    if config.dataset == "imagenet":
        return imagenet_dataset(config.root, split, config.resolution, augment, **common)
    if config.dataset == "ffhq":
        return ffhq_dataset(config.root, split, config.resolution, augment, images=config.ffhq_images,
                            train_list=config.ffhq_train_list, val_list=config.ffhq_val_list, **common)
    return folder_dataset(config.root, config.resolution, split == "train", augment=augment, **common)
