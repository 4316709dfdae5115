"""An uploaded file → the model's input image, with a note for every change made to it.

The browser demo accepts whatever people drop on it: any size, any mode, sometimes not an
image at all. Every problem becomes a `UserError` whose message the page shows; every
conversion (alpha, 16-bit, resize and crop) is said on the page, never done silently.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mvq.data.images import to_rgb
from mvq.data.transforms import eval_transform
from mvq.errors import UserError
from mvq.evaluation.image_metrics import to_uint8_hwc

if TYPE_CHECKING:
    from PIL import Image

# Larger files or images are refused before they are decoded (decoding them could exhaust memory).
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000
# Modes whose conversion to RGB changes how the image is stored (alpha and bit depth get their own notes).
_MODE_NAMES = {"1": "black-and-white", "L": "grayscale", "LA": "grayscale", "La": "grayscale", "CMYK": "CMYK",
               "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV"}


@dataclass
class PreparedImage:
    """The image the model sees (R×R×3 uint8) and what was done to the upload to get it."""

    pixels: np.ndarray
    notes: list[str] = field(default_factory=list)


def _open(path: str | os.PathLike) -> Image.Image:
    """Open (not decode) an image file, refusing empty, oversized and unreadable ones."""
    from PIL import Image

    size = os.path.getsize(path)
    if size == 0:
        raise UserError("the uploaded file is empty: upload a PNG, JPEG or other image file")
    if size > MAX_UPLOAD_BYTES:
        raise UserError(f"the uploaded file is {size / 2**20:.0f} MiB; the demo accepts up to "
                        f"{MAX_UPLOAD_BYTES // 2**20} MiB: upload a smaller image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise UserError(f"the image has too many pixels; the demo accepts up to {MAX_UPLOAD_PIXELS / 1e6:.0f} "
                        f"megapixels: downscale it first") from None
    except (Image.UnidentifiedImageError, OSError, ValueError):
        raise UserError("the uploaded file is not an image the demo can read: upload a PNG, JPEG, WebP, "
                        "BMP, GIF or TIFF image") from None
    width, height = image.size
    if width * height > MAX_UPLOAD_PIXELS:
        image.close()
        raise UserError(f"the image is {width}×{height} ({width * height / 1e6:.0f} megapixels); the demo "
                        f"accepts up to {MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels: downscale it first")
    return image


def prepare_upload(path: str | os.PathLike, resolution: int) -> PreparedImage:
    """Read an uploaded image file and fit it to `resolution` (shorter side resized, centre crop).

    The fitting is `mvq reconstruct`'s and `mvq complete`'s (`eval_transform`), so a photo gets
    the same tokens in the demo as on the command line.
    """
    from PIL import ImageOps

    notes = []
    try:
        with _open(path) as opened:
            frames = getattr(opened, "n_frames", 1)
            if frames > 1:
                notes.append(f"the file holds {frames} frames; the first one is used")
            # 16 bits per channel: grayscale opens as I;16 / I, colour is decoded from raw modes like RGB;16B
            sixteen_bits = opened.mode.startswith("I;16") or any(";16" in str(tile.args) for tile in opened.tile)
            opened.load()
            ImageOps.exif_transpose(opened, in_place=True)
            mode = opened.mode
            has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in opened.info
            rgb = to_rgb(opened)
            width, height = rgb.size
            pixels = to_uint8_hwc(eval_transform(resolution)(rgb)[None])[0]
    except (OSError, ValueError, SyntaxError):
        raise UserError("the uploaded image is damaged or truncated and cannot be decoded: upload another "
                        "file") from None
    if sixteen_bits:
        notes.append("16-bit image scaled to 8 bits")
    elif mode in ("I", "F"):
        notes.append(f"{'32-bit integer' if mode == 'I' else 'floating-point'} image scaled to 8 bits")
    if has_alpha:
        notes.append("the image has transparency: transparent pixels were composited onto white")
    if mode in _MODE_NAMES:
        notes.append(f"{_MODE_NAMES[mode]} image converted to RGB")
    if (width, height) != (resolution, resolution):
        how = "resized" if width == height else "resized (shorter side) and centre-cropped"
        notes.append(f"the {width}×{height} image was {how} to the model's {resolution}×{resolution}")
    return PreparedImage(pixels, notes)
