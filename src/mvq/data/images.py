"""Reading image files as RGB, and finding the files that cannot be read.

Datasets are scanned once when they are built: every file that is empty, not an image,
truncated or otherwise undecodable is left out, and one warning names each of them. Images of
any mode (grayscale, RGBA, palette, CMYK, 16-bit, ...) are converted to 8-bit RGB.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger("mvq.data")

# Transparent pixels are composited onto this colour (the usual page background).
TRANSPARENT_BACKGROUND = (255, 255, 255)
# A warning names at most this many files; `dataset.skipped` always lists all of them.
MAX_NAMED_IN_WARNING = 50


class SkippedFilesWarning(UserWarning):
    """Some files of a dataset are not readable images and were left out."""


def notice(message: str) -> None:
    """Tell the user, on one line of stderr, about something done to their data (a resize, a
    replaced setting) that changes what they get but is not an error."""
    print(f"mvq: {message}", file=sys.stderr)


def _integer_grayscale_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float grayscale -> 8-bit "L", scaling the value range."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        high = 1.0 if values.size and values.max() <= 1.0 else 255.0
    else:  # "I;16*" is 16-bit; "I" usually holds 16-bit data too (older PNG decoders)
        high = 65535.0 if values.size == 0 or values.max() <= 65535 else float(values.max())
    scaled = np.clip(np.rint(values * (255.0 / high)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _integer_grayscale_to_8bit(image).convert("RGB")
    has_alpha = image.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode the image file at `path` completely and return it as 8-bit RGB, upright.

    The EXIF orientation tag (set by cameras and phones) is applied, so a photo is read the
    way image viewers show it. Raises OSError / ValueError (from Pillow) when the file is not
    a readable image.
    """
    with open(path, "rb") as handle:
        image = Image.open(handle)
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb(image)


def _explain(exc: BaseException) -> str:
    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image file"
    if "truncated" in message:
        return f"truncated ({message})"
    return f"cannot decode ({message})"


# File name endings that "name" (the training default) takes for images, in lower case.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                            ".pbm", ".pnm", ".jfif", ".jpe"})


def check_image(path: str | os.PathLike, check: str = "decode") -> str | None:
    """None when `path` is a readable image, otherwise the reason why it is not.

    check="decode" decodes the file (JPEGs at reduced scale, which still reads every byte of
    compressed data, so truncation is caught); check="open" only parses the header;
    check="name" reads nothing: an image file name ending is enough (a file that then fails to
    decode is replaced by the next one when it is read, with a warning); check="none" accepts
    every file.
    """
    if check == "none":
        return None
    if check == "name":
        return None if os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES else "not an image file name"
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with open(path, "rb") as handle:
            image = Image.open(handle)
            if check == "open":
                image.verify()
                return None
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
            to_rgb(image)
        return None
    except Exception as exc:  # any failure means "not usable"; the reason is reported
        return _explain(exc)


def scan_images(paths: Sequence[Path], check: str = "decode",
                num_threads: int = 1) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Split `paths` into readable images and (path, reason) pairs for the others.

    Decoding releases the GIL, so threads spread the scan over cores.
    """
    if check == "none" or not paths:
        return list(paths), []
    if check == "name":  # no file is read: nothing to spread over threads
        num_threads = 1
    if num_threads > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            reasons = list(pool.map(lambda p: check_image(p, check), paths, chunksize=64))
    else:
        reasons = [check_image(p, check) for p in paths]
    good = [p for p, reason in zip(paths, reasons) if reason is None]
    bad = [(p, reason) for p, reason in zip(paths, reasons) if reason is not None]
    return good, bad


def warn_skipped(skipped: Sequence[tuple[Path, str]], total: int, where: str | os.PathLike) -> None:
    """One warning that names every skipped file (up to MAX_NAMED_IN_WARNING) and counts them."""
    logger.info("%s: %d of %d files are readable images, %d skipped", where, total - len(skipped), total,
                len(skipped))
    if not skipped:
        return
    named = [f"{path} ({reason})" for path, reason in skipped[:MAX_NAMED_IN_WARNING]]
    more = len(skipped) - len(named)
    tail = f"; and {more} more (the dataset's `skipped` attribute lists all)" if more else ""
    warnings.warn(SkippedFilesWarning(
        f"skipped {len(skipped)} of {total} files under {where} that are not readable images: "
        + "; ".join(named) + tail), stacklevel=3)


def evenly_spaced(count: int, limit: int | None) -> np.ndarray:
    """Indices of at most `limit` items spread evenly over `count` (all of them if no limit)."""
    if limit is None or limit >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def relative_names(paths: Iterable[Path], base: Path) -> np.ndarray:
    """Paths relative to `base` as one numpy bytes array.

    A list of Path objects is copied page by page into every data-loader worker (reference
    counts touch the pages); one flat array is not.
    """
    prefix = os.path.join(os.fspath(base), "")
    names = []
    for path in map(os.fspath, paths):  # files found by walking `base` start with it: no path arithmetic
        names.append(path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, base))
    return np.array([os.fsencode(name) for name in names], dtype=np.bytes_)
