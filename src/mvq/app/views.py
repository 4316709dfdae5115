"""What each tab of the browser demo shows, computed from the models as uint8 pictures.

Kept free of the web framework so the pictures can be checked without a browser. Small
models (the demo's are 16 px) are enlarged by an integer factor so the page shows every cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mvq.evaluation.image_metrics import from_uint8, psnr, to_uint8
from mvq.pipeline import sample_generator
from mvq.visualize import keep_mask_overlay, score_heatmap

if TYPE_CHECKING:
    from mvq.models.mqvae import MQVAE
    from mvq.models.sampling import SamplingConfig
    from mvq.pipeline import MVQPipeline

# Pictures are enlarged (nearest neighbour, integer factor) to at least about this many pixels.
DISPLAY_SIZE = 256
# Frames of the strip that shows where successive tokens land.
TOKEN_ORDER_FRAMES = 8


def display_scale(resolution: int) -> int:
    """Integer enlargement that makes a `resolution`-pixel image about DISPLAY_SIZE pixels wide."""
    return max(1, DISPLAY_SIZE // resolution)


def enlarge(pixels: np.ndarray, scale: int) -> np.ndarray:
    """H×W×3 uint8 → (scale·H)×(scale·W)×3, every pixel a scale×scale block (cells stay sharp)."""
    return pixels.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else pixels


def tile(images: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """N×H×W×3 uint8 → one picture, `columns` images a row, white gaps of `pad` pixels."""
    n, h, w, c = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // columns) * (h + pad), pad + (i % columns) * (w + pad)
        canvas[top:top + h, left:left + w] = image
    return canvas


def _pixels(images: torch.Tensor) -> np.ndarray:
    """B×3×R×R in [-1, 1] → B×R×R×3 uint8."""
    return to_uint8(images.float()).permute(0, 2, 3, 1).cpu().numpy()


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@dataclass
class TokenizeView:
    """An image through the MQ-VAE: the pictures (enlarged) and the numbers the page shows."""

    model_input: np.ndarray
    kept_cells: np.ndarray
    scores: np.ndarray
    reconstruction: np.ndarray
    num_tokens: int
    num_cells: int
    psnr: float


@torch.no_grad()
def tokenize_view(vae: MQVAE, pixels: np.ndarray) -> TokenizeView:
    """R×R×3 uint8 image → kept cells over it, score heat-map, reconstruction, token count, PSNR."""
    images = from_uint8(torch.from_numpy(pixels).permute(2, 0, 1)[None]).to(_device(vae))
    out = vae(images)
    reconstruction = to_uint8(out.reconstruction.float())
    value = float(psnr(reconstruction, to_uint8(images))[0])
    scale = display_scale(vae.config.resolution)
    kept = _pixels(keep_mask_overlay(images, out.keep_mask))[0]
    heat = _pixels(score_heatmap(images, out.scores))[0]
    return TokenizeView(
        model_input=enlarge(pixels, scale), kept_cells=enlarge(kept, scale), scores=enlarge(heat, scale),
        reconstruction=enlarge(reconstruction.permute(0, 2, 3, 1).cpu().numpy()[0], scale),
        num_tokens=int(out.codes.shape[1]), num_cells=vae.config.num_cells, psnr=value)


def sample_grid(pipeline: MVQPipeline, count: int, label: int | None, seed: int, sampling: SamplingConfig) -> np.ndarray:
    """`count` samples (all of class `label` for class-conditional models) as one enlarged grid."""
    labels = None if label is None else [label] * count
    images = pipeline(n=None if labels else count, labels=labels, seed=seed, batch_size=count, sampling=sampling)
    columns = min(count, 4)
    return tile(np.stack([enlarge(image, display_scale(images.shape[1])) for image in images]), columns)


@torch.no_grad()
def token_order_strip(pipeline: MVQPipeline, label: int | None, seed: int, sampling: SamplingConfig,
                      frames: int = TOKEN_ORDER_FRAMES) -> np.ndarray:
    """The first sample of `sample_grid` decoded from its first K/frames, 2K/frames, ..., K tokens.

    Cells not generated yet are darkened, so the strip shows where successive tokens land.
    """
    vae, stackformer = pipeline.vae, pipeline.stackformer
    codes, positions = stackformer.generate(1, labels=None if label is None else [label],
                                            sampling=sampling, generator=[sample_generator(seed, 0)])
    k = codes.shape[1]
    steps = sorted({max(1, round(k * (i + 1) / frames)) for i in range(frames)})
    scale = display_scale(vae.config.resolution)
    g = vae.config.grid_size
    pictures = []
    for step in steps:  # a handful of decodes of one image, for display
        image = vae.detokenize(codes[:, :step], positions[:, :step]).clamp(-1, 1)
        placed = torch.zeros(1, g * g, dtype=torch.bool, device=positions.device)
        placed.scatter_(1, positions[:, :step], True)
        pictures.append(enlarge(_pixels(keep_mask_overlay(image, placed.view(1, g, g)))[0], scale))
    return tile(np.stack(pictures), len(pictures))


@dataclass
class CompletionView:
    """One row: the input, its kept rows (the rest darkened), then the completions; and the prefix length."""

    row: np.ndarray
    kept_tokens: int


@torch.no_grad()
def completion_view(pipeline: MVQPipeline, pixels: np.ndarray, keep_rows: int, label: int | None, seed: int,
                    count: int, sampling: SamplingConfig) -> CompletionView:
    """Keep the image's tokens in its first `keep_rows` grid rows and let the Stackformer continue `count` times."""
    vae = pipeline.vae
    g, r = vae.config.grid_size, vae.config.resolution
    completions = pipeline.complete(pixels, keep_rows, labels=label, n=count, seed=seed, sampling=sampling)[0]
    _, _, lengths = pipeline.prefix_tokens(pixels, keep_rows)
    rows = torch.arange(g).view(g, 1).expand(g, g) < keep_rows
    image = from_uint8(torch.from_numpy(pixels).permute(2, 0, 1)[None])
    kept = _pixels(keep_mask_overlay(image, rows[None]))[0]
    scale = display_scale(r)
    pictures = [enlarge(picture, scale) for picture in (pixels, kept, *completions)]
    return CompletionView(tile(np.stack(pictures), len(pictures)), int(lengths[0]))
