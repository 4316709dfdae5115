"""PIL image -> float tensor in [-1, 1], with the crops of the paper's training recipes.

Training: resize the shorter side and take a random crop (ImageNet, image folders), or a
random resized crop covering 75-100% of the image (FFHQ); both with optional horizontal flips.
Evaluation: resize the shorter side and take the centre crop. Small images (MNIST's 28 px) can
instead be padded: shrunk only if too large, then centred on black, so no pixel is resampled.
"""

from __future__ import annotations

from typing import Callable

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

ImageTransform = Callable[[Image.Image], torch.Tensor]


def to_signed_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float32 tensor 3×H×W with values in [-1, 1]."""
    return TF.pil_to_tensor(image).float().div_(127.5).sub_(1.0)


def eval_transform(resolution: int) -> ImageTransform:
    """Resize the shorter side to `resolution`, then take the centre square."""
    return T.Compose([T.Resize(resolution), T.CenterCrop(resolution), to_signed_tensor])


def random_crop_transform(resolution: int, horizontal_flip: bool = True) -> ImageTransform:
    """Resize the shorter side to `resolution`, then a random square crop (and flip)."""
    steps = [T.Resize(resolution), T.RandomCrop(resolution)]
    if horizontal_flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [to_signed_tensor])


def random_resized_crop_transform(resolution: int, scale: tuple[float, float] = (0.75, 1.0),
                                  horizontal_flip: bool = True) -> ImageTransform:
    """A random square crop covering `scale` of the image area, resized to `resolution` (and flip)."""
    steps = [T.RandomResizedCrop(resolution, scale=scale, ratio=(1.0, 1.0))]
    if horizontal_flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [to_signed_tensor])


class PadToSquare:
    """Shrink an image that does not fit into resolution×resolution (keeping its aspect), then
    centre it on black: small images keep their exact pixels."""

    def __init__(self, resolution: int):
        self.resolution = resolution

    def __call__(self, image: Image.Image) -> Image.Image:
        r = self.resolution
        if max(image.size) > r:
            scale = r / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.BICUBIC)
        if image.size == (r, r):
            return image
        canvas = Image.new("RGB", (r, r))
        canvas.paste(image, ((r - image.width) // 2, (r - image.height) // 2))
        return canvas


def pad_transform(resolution: int, horizontal_flip: bool = False) -> ImageTransform:
    """`PadToSquare` (and, for training, random flips)."""
    steps = [PadToSquare(resolution)] + ([T.RandomHorizontalFlip()] if horizontal_flip else [])
    return T.Compose(steps + [to_signed_tensor])
