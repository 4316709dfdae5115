"""Square crops of large photographs, for tokenizer training.

A folder of photos (ROOT/train and ROOT/val when both exist, else ROOT for both splits) gives
`crops_per_image` crops of each photo per epoch. A crop's side is a random fraction (in
`scale`) of the photo's shorter side, at a random place, resized to the model's resolution
and flipped at random. Training crops are new every epoch (torch's random state, seeded per
DataLoader worker); validation crops are drawn from a generator seeded by (seed, item index),
so they are the same crops every time, in any order and with any number of workers.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from mvq.data.discovery import list_files
from mvq.data.images import SkippedFilesWarning, load_rgb, relative_names, scan_images, warn_skipped
from mvq.data.transforms import to_signed_tensor
from mvq.errors import MissingInputError

# Items of validation crop i draw from a generator seeded with seed * SEED_STRIDE + i.
SEED_STRIDE = 1_000_003


class PhotoCrops(Dataset):
    """Items {"image": 3×R×R in [-1, 1], "label": -1}: item i is a crop of photo i // crops_per_image."""

    def __init__(self, base: str | os.PathLike, files: Sequence[Path], resolution: int, crops_per_image: int,
                 scale: tuple[float, float], *, random: bool, horizontal_flip: bool = True, seed: int = 0,
                 skipped: Sequence[tuple[Path, str]] = ()):
        self.base = Path(base)
        self._names = relative_names(files, self.base)
        self.resolution = resolution
        self.crops_per_image = crops_per_image
        self.scale = scale
        self.random = random
        self.horizontal_flip = horizontal_flip
        self.seed = seed
        self.skipped = list(skipped)
        self.classes: list[str] = []

    def __len__(self) -> int:
        return len(self._names) * self.crops_per_image

    def path(self, photo: int) -> Path:
        return self.base / os.fsdecode(self._names[photo])

    def crop(self, image: Image.Image, index: int) -> torch.Tensor:
        """Crop number `index` of `image`: a random square (seeded by index unless `random`)."""
        generator = None if self.random else torch.Generator().manual_seed(self.seed * SEED_STRIDE + index)
        size, x, y, flip = torch.rand(4, generator=generator).tolist()
        low, high = self.scale
        side = max(1, round(min(image.size) * (low + (high - low) * size)))
        left, top = round(x * (image.width - side)), round(y * (image.height - side))
        crop = image.resize((self.resolution, self.resolution), Image.BICUBIC,
                            box=(left, top, left + side, top + side))
        if self.horizontal_flip and flip < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_signed_tensor(crop)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crops")
        photo = index // self.crops_per_image
        try:
            image = load_rgb(self.path(photo))
        except Exception as exc:  # a file that changed since the dataset was built
            raise OSError(f"cannot read the photo {self.path(photo)} ({exc})") from exc
        return {"image": self.crop(image, index), "label": -1}


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:  # the header only
        return image.size


def photo_crops_dataset(root: str | os.PathLike | Sequence[str | os.PathLike], split: str, resolution: int,
                        augment: bool, *, crops_per_image: int, scale: tuple[float, float],
                        horizontal_flip: bool = True, seed: int = 0, check: str = "decode",
                        num_threads: int = 1) -> PhotoCrops:
    """Crops of the photos of `split` (see the module docstring); `augment` makes them random.

    `root` may name several photo folders (a list): their photos are used together, in order.
    """
    roots = [Path(r).absolute() for r in ([root] if isinstance(root, (str, os.PathLike)) else root)]
    bases, files = [], []
    for folder in roots:
        if not folder.is_dir():
            raise MissingInputError(f"photo folder {folder} not found; set data.root to a folder of photos")
        has_splits = (folder / "train").is_dir() and (folder / "val").is_dir()
        bases.append(folder / split if has_splits else folder)
        files += list_files(bases[-1])
    base = Path(os.path.commonpath(bases)) if len(bases) > 1 else bases[0]
    good, skipped = scan_images(files, check, num_threads)
    warn_skipped(skipped, len(files), base)
    if not good:
        raise MissingInputError(f"no readable photos under {base}; put image files there, or point data.root at "
                                f"a folder that has them")
    small = [p for p in good if min(_size(p)) < resolution]
    if small:
        warnings.warn(SkippedFilesWarning(
            f"{len(small)} photos under {base} are smaller than {resolution} px on their shorter side; their crops "
            f"are enlarged: {', '.join(str(p) for p in small[:5])}"), stacklevel=2)
    return PhotoCrops(base, good, resolution, crops_per_image, scale, random=augment,
                      horizontal_flip=horizontal_flip and augment, seed=seed, skipped=skipped)

