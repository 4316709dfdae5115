"""torchvision's dataset classes as a data source, reading files already on disk.

`data.dataset: torchvision` with `data.torchvision_class: CIFAR10` (or CIFAR100, FashionMNIST,
MNIST, STL10, CelebA, Flowers102) reads the files torchvision's own class reads, never
downloading (`download=False`). torchvision does the reading; this module only chooses the
split, turns images into RGB at the model's resolution and gives mvq's item dicts.
Where files are missing, one message lists what torchvision expects and where.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mvq.data.config import TORCHVISION_CLASSES
from mvq.data.images import to_rgb
from mvq.data.transforms import ImageTransform
from mvq.errors import UserError

# The files (relative to data.root) each class reads; a trailing "/" marks a folder.
_MNIST_FILES = ("raw/train-images-idx3-ubyte", "raw/train-labels-idx1-ubyte", "raw/t10k-images-idx3-ubyte",
                "raw/t10k-labels-idx1-ubyte")
EXPECTED_FILES: dict[str, tuple[str, ...]] = {
    "MNIST": tuple(f"MNIST/{name}" for name in _MNIST_FILES),
    "FashionMNIST": tuple(f"FashionMNIST/{name}" for name in _MNIST_FILES),
    "CIFAR10": tuple(f"cifar-10-batches-py/{name}" for name in (
        "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
        "batches.meta")),
    "CIFAR100": ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
    "STL10": tuple(f"stl10_binary/{name}" for name in (
        "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt")),
    "CelebA": tuple(f"celeba/{name}" for name in (
        "img_align_celeba/", "list_attr_celeba.txt", "identity_CelebA.txt", "list_bbox_celeba.txt",
        "list_landmarks_align_celeba.txt", "list_eval_partition.txt")),
    "Flowers102": ("flowers-102/jpg/", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
}
# Classes whose labels torchvision does not list in a `classes` attribute.
_NUM_CLASSES = {"Flowers102": 102, "CelebA": 0}


def _split_arguments(name: str, split: str) -> dict[str, Any]:
    """torchvision's arguments for mvq's "train" / "val" split (val: the held-out split it has)."""
    if name in ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100"):
        return {"train": split == "train"}
    if name == "STL10":
        return {"split": "train" if split == "train" else "test"}
    if name == "CelebA":  # no labels: identities and attributes are not classes
        return {"split": "train" if split == "train" else "valid", "target_type": []}
    return {"split": "train" if split == "train" else "val"}  # Flowers102


def _missing_files_message(name: str, root: Path, reason: str) -> str:
    expected = EXPECTED_FILES[name]
    missing = [rel for rel in expected if not (root / rel).exists()]
    listed = ", ".join(str(root / rel) for rel in (missing or expected))
    what = f"missing {len(missing)} of its {len(expected)} files" if missing else f"cannot read them ({reason})"
    hint = ""
    if name in ("MNIST", "FashionMNIST"):
        hint = (f"; from .gz files: gunzip -c FILE-ubyte.gz > {root / name / 'raw'}/FILE-ubyte "
                "(see the README for Debian's dataset-fashion-mnist)")
    return (f"torchvision's {name} under data.root={root}: {what}: {listed}. mvq never downloads: put the files "
            f"there (torchvision's layout) or point data.root at the folder that holds them{hint}")


class TorchvisionImages(Dataset):
    """Items {"image": 3×R×R in [-1, 1], "label": int (-1 without classes)} of a torchvision dataset."""

    def __init__(self, source: Dataset, transform: ImageTransform, classes: list[str], num_classes: int):
        self.source = source
        self.transform = transform
        self.classes = classes
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        image, target = self.source[index]
        label = -1 if target is None else int(target)
        return {"image": self.transform(to_rgb(image)), "label": label}


def torchvision_dataset(name: str, root: str | os.PathLike, split: str, transform: ImageTransform) -> TorchvisionImages:
    """torchvision's `name` dataset read from `root` without downloading, as mvq items."""
    import torchvision.datasets

    if name not in TORCHVISION_CLASSES:
        raise UserError(f"data.torchvision_class must be one of {', '.join(TORCHVISION_CLASSES)}, got {name!r}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(_missing_files_message(name, root, "no such folder"))
    try:
        source = getattr(torchvision.datasets, name)(root, download=False, **_split_arguments(name, split))
    except (RuntimeError, OSError) as exc:  # torchvision's "Dataset not found or corrupted"
        raise UserError(_missing_files_message(name, root, str(exc))) from exc
    except ImportError as exc:  # Flowers102 reads .mat files with scipy
        raise UserError(f"torchvision's {name} needs {exc.name}: pip install {exc.name}") from exc
    classes = [str(c) for c in getattr(source, "classes", None) or []]
    num_classes = _NUM_CLASSES.get(name, len(classes))
    return TorchvisionImages(source, transform, classes, num_classes)

