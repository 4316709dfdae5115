"""Built-in synthetic images: a few coloured shapes on a plain background.

Each image holds one large "main" shape and up to two smaller distractors, each in one of
eight saturated bright colours, over a flat, dim, low-saturation background colour.
The class label is the kind of the largest shape (always the main one: the size ranges are
chosen so that its area exceeds any distractor's, and it is drawn on top). The foreground mask
marks every shape pixel. Image `index` of a split is a pure function of (seed, split, index),
so workers, ranks and reruns all see the same data; images are rendered on the fly from
signed distance fields (a handful of whole-image numpy operations, no per-pixel loops), with
one pixel of anti-aliasing at the edges.

The images are deliberately easy (few colours, no texture): a tiny MQ-VAE learns them in a
few hundred CPU steps at 32-64 pixels, and the four kinds are told apart by shape alone
(colours are drawn independently of the kind).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mvq.errors import InvalidInputError

SHAPE_KINDS = ("circle", "square", "triangle", "cross")

# Sizes as a fraction of the image side. A shape's "radius" r scales its outline; its area is
# AREA_FACTOR[kind]·r² and it fits in a circle of EXTENT_FACTOR[kind]·r. With these ranges the
# smallest main shape (a triangle, 2.03·0.22²) is larger than the largest distractor (a circle,
# π·0.15²), so the label is never ambiguous.
MAIN_RADIUS = (0.22, 0.30)
DISTRACTOR_RADIUS = (0.10, 0.15)
MAX_DISTRACTORS = 2
MAX_TILT = math.pi / 6  # rotation of squares, triangles and crosses, either way

SQUARE_HALF_SIDE = 0.85  # × r
TRIANGLE_CIRCUMRADIUS = 1.25  # × r
CROSS_HALF_WIDTH = 0.35  # arm half-width × r (arm half-length is r)
AREA_FACTOR = (
    math.pi,
    4 * SQUARE_HALF_SIDE ** 2,
    3 * math.sqrt(3) / 4 * TRIANGLE_CIRCUMRADIUS ** 2,
    8 * CROSS_HALF_WIDTH - 4 * CROSS_HALF_WIDTH ** 2,
)
EXTENT_FACTOR = (1.0, SQUARE_HALF_SIDE * math.sqrt(2), TRIANGLE_CIRCUMRADIUS, math.hypot(1.0, CROSS_HALF_WIDTH))

SPLIT_STREAMS = {"train": 0, "val": 1}


@dataclass(frozen=True)
class Shape:
    """One shape of an image, in pixel units (x to the right, y down)."""

    kind: int
    x: float
    y: float
    radius: float
    angle: float
    colour: tuple[float, float, float]  # RGB in [0, 1]

    @property
    def area(self) -> float:
        return AREA_FACTOR[self.kind] * self.radius ** 2

    @property
    def name(self) -> str:
        return SHAPE_KINDS[self.kind]


def _rgb(hue: float, saturation: float, value: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(hue, saturation, value))


# Shape colours: eight evenly spaced hues, saturated and bright (a small palette is cheap to
# put in a codebook, and far from every background colour).
PALETTE = tuple(_rgb(i / 8, 0.9, 0.95) for i in range(8))


def signed_distance(shape: Shape, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Distance in pixels from each (xs, ys) to the shape's outline; negative inside."""
    cos, sin = math.cos(shape.angle), math.sin(shape.angle)
    dx, dy = xs - shape.x, ys - shape.y
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos  # coordinates in the shape's own frame
    r = shape.radius
    if shape.kind == 0:
        return np.hypot(u, v) - r
    if shape.kind == 1:
        return np.maximum(np.abs(u), np.abs(v)) - SQUARE_HALF_SIDE * r
    if shape.kind == 2:  # equilateral, apex up: the furthest of the three edge half-planes
        inradius = TRIANGLE_CIRCUMRADIUS * r / 2
        normals = [math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        return np.max([u * math.cos(a) + v * math.sin(a) for a in normals], axis=0) - inradius
    half_width = CROSS_HALF_WIDTH * r
    bar = np.maximum(np.abs(u) - r, np.abs(v) - half_width)
    column = np.maximum(np.abs(u) - half_width, np.abs(v) - r)
    return np.minimum(bar, column)


class SyntheticShapes(Dataset):
    """`num_images` synthetic images per split; items {"image", "label", "mask"}.

    image: float32 3×R×R in [-1, 1]; label: kind of the largest shape (index in SHAPE_KINDS);
    mask: float32 1×R×R, 1 on shape pixels and 0 on the background.
    """

    num_classes = len(SHAPE_KINDS)
    classes = SHAPE_KINDS

    def __init__(self, num_images: int, resolution: int = 64, seed: int = 0, split: str = "train"):
        if split not in SPLIT_STREAMS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if num_images < 1 or resolution < 8:
            raise InvalidInputError(f"need num_images >= 1 and resolution >= 8, got {num_images} and {resolution}")
        self.num_images = num_images
        self.resolution = resolution
        self.seed = seed
        self.split = split
        centres = np.arange(resolution, dtype=np.float32) + 0.5
        self._xs, self._ys = np.meshgrid(centres, centres)

    def __len__(self) -> int:
        return self.num_images

    def _random_shape(self, rng: np.random.Generator, radius_range: tuple[float, float]) -> Shape:
        side = self.resolution
        kind = int(rng.integers(len(SHAPE_KINDS)))
        radius = float(rng.uniform(*radius_range)) * side
        margin = EXTENT_FACTOR[kind] * radius
        x, y = rng.uniform(margin, side - margin, size=2)
        angle = 0.0 if kind == 0 else float(rng.uniform(-MAX_TILT, MAX_TILT))
        colour = PALETTE[int(rng.integers(len(PALETTE)))]
        return Shape(kind, float(x), float(y), radius, angle, colour)

    def layout(self, index: int) -> tuple[tuple[float, float, float], list[Shape]]:
        """The background colour and shapes of image `index`, shapes in drawing order (main last)."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} synthetic images")
        rng = np.random.default_rng([self.seed, SPLIT_STREAMS[self.split], index])
        background = _rgb(rng.uniform(), rng.uniform(0.0, 0.35), rng.uniform(0.2, 0.45))
        main = self._random_shape(rng, MAIN_RADIUS)
        distractors = [self._random_shape(rng, DISTRACTOR_RADIUS)
                       for _ in range(int(rng.integers(MAX_DISTRACTORS + 1)))]
        return background, distractors + [main]

    def label(self, index: int) -> int:
        """Kind of the largest shape of image `index`."""
        shapes = self.layout(index)[1]
        return max(shapes, key=lambda s: s.area).kind

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Image `index` as (H×W×3 float32 in [0, 1], H×W bool foreground mask, label)."""
        background, shapes = self.layout(index)
        image = np.broadcast_to(np.asarray(background, np.float32), (*self._xs.shape, 3)).copy()
        foreground = np.zeros(image.shape[:2], np.float32)
        for shape in shapes:
            # one pixel of anti-aliasing: coverage goes 1 -> 0 as the distance goes -0.5 -> 0.5
            cover = np.clip(0.5 - signed_distance(shape, self._xs, self._ys), 0.0, 1.0).astype(np.float32)
            image += cover[..., None] * (np.asarray(shape.colour, np.float32) - image)
            foreground = np.maximum(foreground, cover)
        label = max(shapes, key=lambda s: s.area).kind
        return np.clip(image, 0.0, 1.0), foreground >= 0.5, label

    def __getitem__(self, index: int) -> dict:
        image, mask, label = self.render(index)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).mul(2.0).sub(1.0).contiguous(),
            "label": label,
            "mask": torch.from_numpy(mask[None].astype(np.float32)),
        }
