"""The `data:` section of a training config.

Dataset roots always come from here (or from `--data PATH` on the command line), never from
code. Build it from a mapping with `mvq.config.build_dataclass(DataConfig, mapping, "data")`,
which rejects unknown keys; the checks below reject unusable values.
"""

from __future__ import annotations

from dataclasses import dataclass

from mvq.config import ConfigError

DATASETS = ("synthetic", "imagenet", "ffhq", "folder")
IMAGE_CHECKS = ("decode", "open", "none")


@dataclass
class DataConfig:
    """Which images to train on, at what size, and how to load them.

    dataset: "synthetic" (built-in shapes, no files), "imagenet" (ROOT/train, ROOT/val with one
      folder per synset), "ffhq" (ROOT/FFHQ images + list files) or "folder" (any image folder,
      optionally one subfolder per class; ROOT/train and ROOT/val are used when both exist).
    root: the dataset folder; required for every dataset except "synthetic".
    batch_size: per device.
    num_train, num_val, seed: size and seed of the synthetic dataset.
    ffhq_images, ffhq_train_list, ffhq_val_list: FFHQ image folder and list files, relative to root.
    horizontal_flip: random flips of training images (files only; never for validation).
    max_val_images: evaluate on at most this many validation images (evenly spaced subset).
    check_images: how files are checked when the dataset is built. "decode" decodes every file
      once (catches truncated files); "open" reads only headers (fast on huge datasets; a file
      that later fails to decode is skipped then, with a warning); "none" checks nothing.
    """

    dataset: str = "synthetic"
    root: str | None = None
    resolution: int = 256
    batch_size: int = 4
    num_workers: int = 4
    num_train: int = 10000
    num_val: int = 500
    seed: int = 0
    ffhq_images: str = "FFHQ"
    ffhq_train_list: str = "assets/ffhqtrain.txt"
    ffhq_val_list: str = "assets/ffhqvalidation.txt"
    horizontal_flip: bool = True
    max_val_images: int | None = None
    check_images: str = "decode"

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.dataset != "synthetic" and not self.root:
            raise ConfigError(
                f"data.root is required for dataset {self.dataset!r}: set data.root=/path/to/images "
                "in the config or on the command line, or pass --data PATH")
        if self.resolution < 8:
            raise ConfigError(f"data.resolution must be at least 8 pixels, got {self.resolution}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be positive, got {self.batch_size}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be 0 or more, got {self.num_workers}")
        if self.num_train < 1 or self.num_val < 1:
            raise ConfigError(f"data.num_train and data.num_val must be positive, got {self.num_train}, {self.num_val}")
        if self.max_val_images is not None and self.max_val_images < 1:
            raise ConfigError(f"data.max_val_images must be positive or null, got {self.max_val_images}")
        if self.check_images not in IMAGE_CHECKS:
            raise ConfigError(f"data.check_images must be one of {', '.join(IMAGE_CHECKS)}, got {self.check_images!r}")
