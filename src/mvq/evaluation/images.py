"""Reading image sets for FID/IS: a folder of image files, or an .npz/.npy array of uint8 images.

Both yield uint8 batches B×3×R×R. An .npz is the layout common evaluators read (`arr_0`,
N×R×R×3 uint8) and is streamed from the archive batch by batch, so 50k samples at 256 px
(~10 GB) never sit in memory at once.
"""

from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from mvq.data.discovery import list_files
from mvq.data.images import load_rgb
from mvq.errors import InvalidInputError, MissingInputError, UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def check_count(name: str, value: int | None, minimum: int, hint: str = "") -> None:
    """Refuse a count below `minimum` (None means "all" and passes): 0 must not quietly mean everything."""
    if value is not None and value < minimum:
        raise InvalidInputError(f"{name} must be at least {minimum}{hint}, got {value}")


def evaluation_indices(set_size: int, num_images: int | None, seed: int = 0) -> list[int]:
    """All indices, or a seeded random subset of `num_images` (sorted): a subset of a class-sorted
    set still covers all classes, and the same N always picks the same images."""
    if num_images is None or num_images >= set_size:
        return list(range(set_size))
    if num_images < 1:
        raise InvalidInputError(f"number of images must be positive, got {num_images}")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(set_size, generator=generator)[:num_images].tolist())


def fit_resolution(image, resolution: int):
    """PIL image → resolution×resolution: bicubic resize of the shorter side, then a centre crop.

    The evaluation protocol's fitting of FID/IS image folders and arrays. What the models take in
    (`mvq tokenize`, `reconstruct`, `complete`, the browser demo) is fitted by
    `mvq.data.transforms.eval_transform` instead, as in training.
    """
    from PIL import Image

    if image.size == (resolution, resolution):
        return image
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(size, resample=Image.BICUBIC)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


class ImageFolder(torch.utils.data.Dataset):
    """Image files under `root` (recursively, sorted by path) as uint8 3×R×R tensors.

    Without `resolution` every image must already have the same size. Unreadable files give
    None (dropped by `collate_images`) and a warning that names them.
    """

    def __init__(self, root: str | os.PathLike, resolution: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingInputError(f"image folder not found: {self.root}")

        self.files = sorted(p for p in list_files(self.root) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not self.files:
            raise InvalidInputError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor | None:
        path = self.files[index]
        try:
            image = load_rgb(path)
            if self.resolution is not None:
                image = fit_resolution(image, self.resolution)
            array = np.asarray(image, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping {path}: not a readable image ({exc})", stacklevel=2)
            return None
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


def collate_images(items: list[torch.Tensor | None]) -> torch.Tensor:
    """Stack uint8 images, dropping unreadable ones; sizes must agree."""
    items = [x for x in items if x is not None]
    if not items:
        return torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    shapes = {tuple(x.shape) for x in items}
    if len(shapes) > 1:
        raise InvalidInputError(f"images of different sizes {sorted(shapes)[:3]} in one set; pass a resolution "
                                "(--resolution R) to resize and centre-crop them all to R×R")
    return torch.stack(items)


class NumpyImages:
    """uint8 N×R×R×3 images from an .npz (`arr_0`) or .npy file, read in batches."""

    def __init__(self, path: str | os.PathLike, resolution: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingInputError(f"image array file not found: {self.path}")
        self.resolution = resolution
        with self._open() as (shape, dtype, _stream):
            pass
        if len(shape) != 4 or shape[3] != 3 or dtype != np.uint8:
            raise InvalidInputError(f"{self.path}: expected uint8 images N×R×R×3, got {dtype} {shape}")
        self.shape = shape

    def __len__(self) -> int:
        return self.shape[0]

    def _open(self):
        return _ArrayStream(self.path)

    def batches(self, batch_size: int, indices: list[int] | None = None) -> Iterator[torch.Tensor]:
        """uint8 batches B×3×R×R of all images, or of the (sorted) `indices`, read in one pass."""
        for array in _rebatch(self._chunks(batch_size, indices), batch_size):
            yield _to_chw(array, self.resolution)

    def _chunks(self, chunk_size: int, indices: list[int] | None) -> Iterator[np.ndarray]:
        per_image = int(np.prod(self.shape[1:]))
        wanted = None
        end = len(self)
        if indices is not None:
            wanted = np.zeros(len(self), dtype=bool)
            wanted[np.asarray(indices, dtype=np.int64)] = True
            end = int(np.flatnonzero(wanted)[-1]) + 1 if wanted.any() else 0
        with self._open() as (_shape, _dtype, read):
            for start in range(0, end, chunk_size):
                count = min(chunk_size, end - start)
                array = read(count * per_image).reshape(count, *self.shape[1:])
                yield array if wanted is None else array[wanted[start:start + count]]


def _rebatch(chunks: Iterator[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Regroup arrays of any lengths into arrays of `batch_size` rows (the last one may be shorter)."""
    buffer = np.empty((0,))
    for chunk in chunks:
        buffer = chunk if len(buffer) == 0 else np.concatenate([buffer, chunk])
        while len(buffer) >= batch_size:
            yield buffer[:batch_size]
            buffer = buffer[batch_size:]
    if len(buffer):
        yield buffer


class _ArrayStream:
    """Context manager giving (shape, dtype, read(n_items)) for arr_0 of an .npz or for an .npy."""

    def __init__(self, path: Path):
        self.path = path
        self._closers = []

    def __enter__(self):
        try:
            return self._open()
        except BaseException as exc:
            self.__exit__()
            if isinstance(exc, _READ_ERRORS) and not isinstance(exc, UserError):
                raise InvalidInputError(f"{self.path} is not a readable {self.path.suffix} file ({exc}); is it "
                                        "truncated? Copy or write it again") from exc
            raise

    def _open(self):
        if self.path.suffix == ".npy":
            f = open(self.path, "rb")
            size = os.fstat(f.fileno()).st_size
        elif self.path.suffix == ".npz":
            archive = zipfile.ZipFile(self.path)
            self._closers.append(archive)
            if "arr_0.npy" not in archive.namelist():
                raise InvalidInputError(f"{self.path} has no image array arr_0 (entries: "
                                        f"{', '.join(n.removesuffix('.npy') for n in archive.namelist())})")
            size = archive.getinfo("arr_0.npy").file_size
            f = archive.open("arr_0.npy")
        else:
            raise InvalidInputError(f"{self.path}: image arrays are read from .npz or .npy files")
        self._closers.append(f)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        if fortran_order:
            raise InvalidInputError(f"{self.path}: Fortran-ordered arrays are not supported; save with np.savez")
        # The header promises the array's size: a file cut short is found now, not after a network ran on half of it.
        expected = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size < expected and not dtype.hasobject:  # object arrays are pickled: no fixed size (and refused later)
            raise InvalidInputError(f"{self.path} is truncated: its array {dtype} {shape} needs {expected} bytes, the "
                                    f"file holds {size}; copy or write it again")

        def read(num_items: int) -> np.ndarray:
            try:
                data = f.read(num_items * dtype.itemsize)
            except _READ_ERRORS as exc:  # e.g. a CRC mismatch: the bytes on disk are damaged
                raise InvalidInputError(f"{self.path} could not be read ({exc}); is it truncated or damaged? "
                                        "Copy or write it again") from exc
            if len(data) != num_items * dtype.itemsize:
                raise InvalidInputError(f"{self.path} is truncated")
            return np.frombuffer(data, dtype=dtype)

        return shape, dtype, read

    def __exit__(self, *exc) -> None:
        for c in reversed(self._closers):
            c.close()
        self._closers = []


def _to_chw(array: np.ndarray, resolution: int | None) -> torch.Tensor:
    if resolution is not None and array.shape[1:3] != (resolution, resolution):
        from PIL import Image

        array = np.stack([np.asarray(fit_resolution(Image.fromarray(a), resolution)) for a in array])
    return torch.from_numpy(np.array(array, copy=True)).permute(0, 3, 1, 2)  # own, writable memory


class ImageSet:
    """A folder of images or an .npz/.npy image array, read as uint8 batches B×3×R×R."""

    def __init__(self, path: str | os.PathLike, resolution: int | None = None, num_workers: int = 0):
        self.path = Path(path)
        self.num_workers = num_workers
        if self.path.is_dir():
            self.source: ImageFolder | NumpyImages = ImageFolder(self.path, resolution)
        elif self.path.suffix in (".npz", ".npy"):
            self.source = NumpyImages(self.path, resolution)
        elif self.path.exists():
            raise InvalidInputError(f"{self.path}: expected a folder of images or an .npz/.npy image array")
        else:
            raise MissingInputError(f"no such image folder or .npz file: {self.path}")

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, batch_size: int, limit: int | None = None, seed: int = 0) -> Iterator[torch.Tensor]:
        """uint8 batches B×3×R×R of all images, or of a seeded random subset of `limit` images."""
        indices = None if limit is None or limit >= len(self) else evaluation_indices(len(self), limit, seed)
        if isinstance(self.source, NumpyImages):
            yield from self.source.batches(batch_size, indices)
            return
        dataset = self.source if indices is None else torch.utils.data.Subset(self.source, indices)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=self.num_workers,
                                             collate_fn=collate_images)
        for batch in loader:
            if len(batch):
                yield batch
