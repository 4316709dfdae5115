"""The on-disk dataset layouts: ImageNet, FFHQ and any image folder.

ImageNet:  ROOT/train/<synset>/*.JPEG and ROOT/val/<synset>/*.JPEG; the class index of a
           synset is its place in the sorted list of ROOT/train's folders.
FFHQ:      ROOT/FFHQ/*.png with list files ROOT/assets/ffhqtrain.txt and
           ROOT/assets/ffhqvalidation.txt (one file name per line, relative to ROOT/FFHQ).
Folder:    every image under ROOT, recursively. When all images lie in subfolders, each
           top-level subfolder is a class (sorted order). When ROOT holds both train/ and val/,
           those are the two splits; otherwise both splits read the whole folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from mvq.data.discovery import list_files, subfolders
from mvq.data.files import ImageFileDataset
from mvq.data.images import evenly_spaced, scan_images, warn_skipped
from mvq.data.transforms import (ImageTransform, eval_transform, random_crop_transform,
                                 random_resized_crop_transform)
from mvq.errors import MissingInputError

SPLITS = ("train", "val")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def _finish(base: Path, files: list[Path], labels: list[int] | None, skipped: list[tuple[Path, str]],
            transform: ImageTransform, classes: list[str], max_images: int | None,
            check: str, num_threads: int) -> ImageFileDataset:
    """Scan the candidate files, warn about the unreadable ones, subsample, build the dataset."""
    total = len(files) + len(skipped)
    label_of = dict(zip(files, labels)) if labels is not None else None
    good, bad = scan_images(files, check, num_threads)
    skipped = skipped + bad
    warn_skipped(skipped, total, base)
    if not good:
        raise MissingInputError(f"no readable images under {base}" +
                                (f" ({len(skipped)} files skipped, see the warning above)" if skipped else ""))
    keep = evenly_spaced(len(good), max_images)
    good = [good[i] for i in keep]
    good_labels = [label_of[p] for p in good] if label_of is not None else None
    return ImageFileDataset(base, good, good_labels, transform, classes, skipped)


def _transform(resolution: int, augment: bool, crop: str, horizontal_flip: bool) -> ImageTransform:
    if not augment:
        return eval_transform(resolution)
    if crop == "resized":
        return random_resized_crop_transform(resolution, (0.75, 1.0), horizontal_flip)
    return random_crop_transform(resolution, horizontal_flip)


def imagenet_dataset(root: str | os.PathLike, split: str, resolution: int, augment: bool, *,
                     horizontal_flip: bool = True, max_images: int | None = None,
                     check: str = "decode", num_threads: int = 1) -> ImageFileDataset:
    """ImageNet in the usual folder layout (see the module docstring)."""
    _check_split(split)
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise MissingInputError(
            f"ImageNet {split} folder {split_dir} not found: the ImageNet layout is ROOT/train/<synset>/*.JPEG "
            f"and ROOT/val/<synset>/*.JPEG with data.root=ROOT")
    class_dir = root / "train" if (root / "train").is_dir() else split_dir
    synsets = subfolders(class_dir)
    if not synsets:
        raise MissingInputError(f"no synset folders (e.g. n01440764/) in {class_dir}")
    index_of = {name: i for i, name in enumerate(synsets)}
    files, labels, skipped = [], [], []
    for path in list_files(split_dir, cache=True):
        top = path.relative_to(split_dir).parts[0]
        if len(path.relative_to(split_dir).parts) == 1:
            skipped.append((path, "not inside a synset folder"))
        elif top not in index_of:
            skipped.append((path, f"synset {top} is not one of the {len(synsets)} folders of {class_dir}"))
        else:
            files.append(path)
            labels.append(index_of[top])
    if not files and skipped:
        raise MissingInputError(f"no images inside synset folders of {split_dir}: ImageNet's {split} images must be "
                                f"sorted into one folder per synset (ROOT/{split}/n01440764/*.JPEG, ...)")
    return _finish(split_dir, files, labels, skipped, _transform(resolution, augment, "crop", horizontal_flip),
                   synsets, max_images, check, num_threads)


def ffhq_dataset(root: str | os.PathLike, split: str, resolution: int, augment: bool, *,
                 images: str = "FFHQ", train_list: str = "assets/ffhqtrain.txt",
                 val_list: str = "assets/ffhqvalidation.txt", horizontal_flip: bool = True,
                 max_images: int | None = None, check: str = "decode", num_threads: int = 1) -> ImageFileDataset:
    """FFHQ: the images listed in the split's list file; training uses random resized crops."""
    _check_split(split)
    root = Path(root)
    image_dir = root / images
    list_file = root / (train_list if split == "train" else val_list)
    if not image_dir.is_dir():
        raise MissingInputError(f"FFHQ image folder {image_dir} not found (data.ffhq_images, relative to data.root)")
    if not list_file.is_file():
        raise MissingInputError(
            f"FFHQ list file {list_file} not found: it holds one image name per line (e.g. 00000.png), "
            f"relative to {image_dir}; set data.ffhq_train_list / data.ffhq_val_list (relative to data.root)")
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    files = [image_dir / name for name in names if (image_dir / name).is_file()]
    skipped = [(image_dir / name, f"listed in {list_file.name} but missing") for name in names
               if not (image_dir / name).is_file()]
    return _finish(image_dir, files, None, skipped, _transform(resolution, augment, "resized", horizontal_flip),
                   [], max_images, check, num_threads)


def folder_dataset(path: str | os.PathLike, resolution: int, train: bool, *, augment: bool | None = None,
                   horizontal_flip: bool = True, max_images: int | None = None, check: str = "decode",
                   num_threads: int = 1) -> ImageFileDataset:
    """Any image folder (see the module docstring); `train` picks the split, `augment`
    (default: `train`) the random crops and flips."""
    root = Path(path)
    if not root.is_dir():
        raise MissingInputError(f"image folder {root} not found")
    split = "train" if train else "val"
    has_splits = (root / "train").is_dir() and (root / "val").is_dir()
    base = root / split if has_splits else root
    readable, skipped = scan_images(list_files(base, cache=True), check, num_threads)  # scanned once, here
    classes = subfolders(root / "train" if has_splits else base)
    files, labels = readable, None
    prefix = os.path.join(os.fspath(base), "")  # the walk's paths start with it: string slices, not Path arithmetic
    first_part = [os.fspath(p)[len(prefix):].split(os.sep, 1) for p in readable]
    if classes and all(len(parts) == 2 for parts in first_part):  # all images in subfolders: classes
        index_of = {name: i for i, name in enumerate(classes)}
        class_of = [parts[0] for parts in first_part]
        files = [p for p, name in zip(readable, class_of) if name in index_of]
        labels = [index_of[name] for name in class_of if name in index_of]
        skipped += [(p, f"class folder {name} is not among those of {root / 'train'}")
                    for p, name in zip(readable, class_of) if name not in index_of]
    else:
        classes = []
    transform = _transform(resolution, train if augment is None else augment, "crop", horizontal_flip)
    return _finish(base, files, labels, skipped, transform, classes, max_images, "none", num_threads)
