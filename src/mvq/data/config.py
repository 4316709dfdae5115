"""The `data:` section of a training config.

Dataset roots always come from here (or from `--data PATH` on the command line), never from
code. Build it from a mapping with `mvq.config.build_dataclass(DataConfig, mapping, "data")`,
which rejects unknown keys; the checks below reject unusable values.
"""

from __future__ import annotations

from dataclasses import dataclass

from mvq.config import ConfigError

DATASETS = ("synthetic", "imagenet", "ffhq", "folder", "torchvision", "photos", "shards")
IMAGE_CHECKS = ("name", "decode", "open", "none")
FITS = ("crop", "pad")
TORCHVISION_CLASSES = ("CIFAR10", "CIFAR100", "FashionMNIST", "MNIST", "STL10", "CelebA", "Flowers102")


@dataclass
class DataConfig:
    """Which images to train on, at what size, and how to load them.

    dataset: "synthetic" (built-in shapes, no files), "imagenet" (ROOT/train, ROOT/val with one
      folder per synset), "ffhq" (ROOT/FFHQ images + list files), "folder" (any image folder,
      optionally one subfolder per class; ROOT/train and ROOT/val are used when both exist),
      "torchvision" (one of torchvision's dataset classes over files already under ROOT) or
      "photos" (random square crops of large photographs; ROOT/train and ROOT/val when both exist)
      or "shards" (WebDataset tar shards as `mvq shards` writes them: ROOT/train and ROOT/val).
    root: the dataset folder; required for every dataset except "synthetic". "photos" also takes a list
      of folders, whose photos are used together.
    torchvision_class: for "torchvision": CIFAR10, CIFAR100, FashionMNIST, MNIST, STL10, CelebA
      or Flowers102. Its train split is mvq's "train"; its held-out split (test, or valid/val
      where it has one) is mvq's "val".
    fit: for "torchvision": "crop" (resize the shorter side, then crop: random for training,
      centre for evaluation) or "pad" (shrink only if too large, centre on black: small images
      such as MNIST's 28 px keep their exact pixels).
    crops_per_image, val_crops_per_image: for "photos": crops of each training photo per epoch,
      and the fixed validation crops of each validation photo.
    crop_scale: for "photos": [low, high] range of a crop's side as a fraction of the photo's
      shorter side; the crop is then resized to `resolution`.
    batch_size: per device.
    num_train, num_val, seed: size and seed of the synthetic dataset.
    ffhq_images, ffhq_train_list, ffhq_val_list: FFHQ image folder and list files, relative to root.
    horizontal_flip: random flips of training images (files only; never for validation).
    max_val_images: evaluate on at most this many validation images (evenly spaced subset).
    train_shards, val_shards: for "shards": where a split's shards are, instead of ROOT/train and
      ROOT/val: a folder with shards.json, a local glob or brace pattern (`/data/in1k-{0000..1023}.tar`)
      or URLs (`https://…`, `pipe:aws s3 cp s3://… -`).
    samples_per_shard: for "shards" named by URL (no shards.json beside them): the samples in each.
    shuffle_buffer: for "shards": how many samples a data-loading worker shuffles among (besides
      the shard order, drawn anew each epoch).
    check_images: how files are checked when the dataset is built. "name" (the default) reads no
      file: the folder walk keeps the files with an image name ending, so a million files cost a
      directory walk, and a file that fails to decode when it is read is replaced by the next one,
      with a warning naming it. "open" reads every header; "decode" decodes every file once (catches
      truncated files up front, at the cost of reading the whole dataset at every start); "none"
      keeps every file.
    max_unreadable_files: training stops (at the end of an epoch) once more files than this have
      failed to decode when read; each is named in RUN/unreadable_files.tsv.
    """

    dataset: str = "synthetic"
    root: str | list[str] | None = None
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
    check_images: str = "name"
    max_unreadable_files: int = 1000
    torchvision_class: str | None = None
    fit: str = "crop"
    crops_per_image: int = 16
    val_crops_per_image: int = 4
    crop_scale: tuple[float, float] = (0.25, 1.0)
    train_shards: str | None = None
    val_shards: str | None = None
    samples_per_shard: int | None = None
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        has_shards = self.dataset == "shards" and self.train_shards and self.val_shards
        if self.dataset != "synthetic" and not self.root and not has_shards:
            raise ConfigError(
                f"data.root is required for dataset {self.dataset!r}: set data.root=/path/to/images "
                "in the config or on the command line, or pass --data PATH")
        if isinstance(self.root, (list, tuple)) and self.dataset != "photos":
            raise ConfigError(f"data.root names one folder for dataset {self.dataset!r}; only 'photos' takes a list "
                              "of folders")
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
        if self.dataset == "torchvision" and self.torchvision_class not in TORCHVISION_CLASSES:
            raise ConfigError(f"data.torchvision_class must be one of {', '.join(TORCHVISION_CLASSES)} for "
                              f"data.dataset=torchvision, got {self.torchvision_class!r}")
        if self.fit not in FITS:
            raise ConfigError(f"data.fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if self.crops_per_image < 1 or self.val_crops_per_image < 1:
            raise ConfigError(f"data.crops_per_image and data.val_crops_per_image must be positive, got "
                              f"{self.crops_per_image}, {self.val_crops_per_image}")
        scale = tuple(self.crop_scale)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ConfigError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(scale)}")
        if self.max_unreadable_files < 0:
            raise ConfigError(f"data.max_unreadable_files must be 0 or more, got {self.max_unreadable_files}")
        if self.shuffle_buffer < 1 or (self.samples_per_shard is not None and self.samples_per_shard < 1):
            raise ConfigError(f"data.shuffle_buffer and data.samples_per_shard must be positive, got "
                              f"{self.shuffle_buffer}, {self.samples_per_shard}")
        if self.dataset == "shards" and self.max_val_images is not None:
            raise ConfigError("data.max_val_images does not apply to shards: write the validation shards you want "
                              "evaluated (mvq shards ... data.max_val_images=N)")
        if self.check_images not in IMAGE_CHECKS:
            raise ConfigError(f"data.check_images must be one of {', '.join(IMAGE_CHECKS)}, got {self.check_images!r}")
