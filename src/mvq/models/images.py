"""The image check every tokenizer runs on its input: shape, finite values, range [-1, 1]."""

from __future__ import annotations

import math

import torch

from mvq.errors import InvalidInputError

# Pixel values a tokenizer accepts: [-1, 1], with room for float rounding of normalised 8-bit images.
PIXEL_RANGE_TOLERANCE = 1e-4


def check_images(images: torch.Tensor, in_channels: int, resolution: int, values: bool = True,
                 model_name: str = "model") -> None:
    """Shape always; with `values`, finite pixels in [-1, 1] (one host sync, so never in forward passes).

    Raises InvalidInputError (a UserError and a ValueError) saying what is wrong.
    """
    expected = (in_channels, resolution, resolution)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise InvalidInputError(f"expected images of shape B×{in_channels}×{resolution}×{resolution}, "
                         f"got {tuple(images.shape)}")
    if not values or images.numel() == 0:
        return
    low, high = torch.stack(images.detach().aminmax()).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InvalidInputError(f"images contain NaN or infinite pixel values; the {model_name} needs finite images in "
                         f"[-1, 1]")
    if low < -1 - PIXEL_RANGE_TOLERANCE or high > 1 + PIXEL_RANGE_TOLERANCE:
        raise InvalidInputError(f"image values range over [{low:.4g}, {high:.4g}]; the {model_name} expects [-1, 1] "
                         f"(8-bit pixels p map to p / 127.5 - 1)")
