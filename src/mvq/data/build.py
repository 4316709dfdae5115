"""`build_dataset`: the dataset a `data:` config section describes; `dataset_from_path`: a `--data` argument."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

from torch.utils.data import Dataset, Subset

from mvq.config import ConfigError, apply_overrides, build_dataclass, load_yaml
from mvq.data.config import DataConfig
from mvq.data.images import evenly_spaced, notice
from mvq.data.layouts import SPLITS, ffhq_dataset, folder_dataset, imagenet_dataset
from mvq.data.photos import photo_crops_dataset
from mvq.data.shards import ShardFiles, find_shards, shard_stream
from mvq.data.synthetic import SyntheticShapes
from mvq.data.torchvision_sets import torchvision_dataset
from mvq.data.transforms import eval_transform, pad_transform, random_crop_transform
from mvq.errors import UserError


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
        return _limit(SyntheticShapes(size, config.resolution, config.seed, split), limit)
    common = dict(horizontal_flip=config.horizontal_flip, max_images=limit, check=config.check_images,
                  num_threads=max(1, config.num_workers))
    if config.dataset == "imagenet":
        return imagenet_dataset(config.root, split, config.resolution, augment, **common)
    if config.dataset == "ffhq":
        return ffhq_dataset(config.root, split, config.resolution, augment, images=config.ffhq_images,
                            train_list=config.ffhq_train_list, val_list=config.ffhq_val_list, **common)
    if config.dataset == "torchvision":
        return _torchvision(config, split, augment)
    if config.dataset == "shards":  # a stream in training; by index (local shards) otherwise
        spec = (config.train_shards if split == "train" else config.val_shards) or Path(config.root) / split
        if not augment:
            return ShardFiles(find_shards(spec, config.samples_per_shard), eval_transform(config.resolution))
        return shard_stream(spec, random_crop_transform(config.resolution, config.horizontal_flip),
                            batch_size=config.batch_size, num_workers=config.num_workers, seed=config.seed,
                            shuffle_buffer=config.shuffle_buffer, samples_per_shard=config.samples_per_shard)
    if config.dataset == "photos":
        crops = config.crops_per_image if split == "train" else config.val_crops_per_image
        dataset = photo_crops_dataset(config.root, split, config.resolution, augment, crops_per_image=crops,
                                      scale=tuple(config.crop_scale), horizontal_flip=config.horizontal_flip,
                                      seed=config.seed, check=config.check_images, num_threads=common["num_threads"])
        return _limit(dataset, limit)
    return folder_dataset(config.root, config.resolution, split == "train", augment=augment, **common)


def _limit(dataset: Dataset, limit: int | None) -> Dataset:
    """At most `limit` items, evenly spaced over the dataset."""
    if limit is None or limit >= len(dataset):
        return dataset
    return Subset(dataset, evenly_spaced(len(dataset), limit).tolist())


def _torchvision(config: DataConfig, split: str, augment: bool) -> Dataset:
    flip = augment and config.horizontal_flip
    if config.fit == "pad":
        transform = pad_transform(config.resolution, flip)
    elif augment:
        transform = random_crop_transform(config.resolution, flip)
    else:
        transform = eval_transform(config.resolution)
    dataset = torchvision_dataset(config.torchvision_class, config.root, split, transform)
    return _limit(dataset, config.max_val_images if split == "val" else None)


def dataset_from_path(data: str | os.PathLike, split: str, resolution: int | None = None,
                      overrides: Sequence[str] = ()) -> Dataset:
    """The dataset a command's `--data` names: an image folder, or a YAML config's `data:` section
    with `overrides` (`data.root=/path`: a config names where its data lie on one machine only).

    Images are read the way they are evaluated (resize and centre crop, no random flips): this
    is what `mvq tokenize`, `mvq eval` and friends encode. `resolution` (the model's) replaces a
    config's own `data.resolution`, with a notice when they differ; a folder needs it.
    """
    path = Path(data)
    if path.is_dir():
        if overrides:
            raise UserError(f"{' '.join(overrides)}: key=value changes apply to a config's data section, and "
                            f"--data {data} is a folder of images")
        if resolution is None:
            raise UserError(f"reading the image folder {path} needs a resolution (--resolution R)")
        return folder_dataset(path, resolution, train=split == "train", augment=False)
    if not path.is_file():
        raise UserError(f"--data {data}: no such config file or image folder")
    section = load_yaml(path).get("data")
    if not isinstance(section, dict):
        raise ConfigError(f"{path} has no 'data:' section to build the dataset from")
    if overrides:
        if any(not item.startswith("data.") for item in overrides):
            raise ConfigError(f"{' '.join(overrides)}: only the data section can be changed here (data.KEY=VALUE)")
        section = apply_overrides({"data": section}, list(overrides))["data"]
    config = build_dataclass(DataConfig, section, "data")
    if resolution is not None and resolution != config.resolution:
        notice(f"using resolution {resolution} (the model's) instead of the config's {config.resolution}")
        config = dataclasses.replace(config, resolution=resolution)
    return build_dataset(config, split, augment=False)
