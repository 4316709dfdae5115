"""What each tab of the browser demo shows, computed from the models as uint8 pictures.

Kept free of the web framework so the pictures can be checked without a browser. Small
models (the demo's are 16 px) are enlarged by an integer factor so the page shows every cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mvq.errors import UserError
from mvq.evaluation.image_metrics import from_uint8_hwc, psnr, to_uint8, to_uint8_hwc
from mvq.models.keep_budget import psnr_at_least, smallest_keep
from mvq.models.mqvae import MQVAE
from mvq.nn.masker import keep_mask_from_positions
from mvq.inference.pipeline import sample_generator
from mvq.visualize import completion_pictures, enlarge, enlargement, keep_mask_overlay, score_heatmap

if TYPE_CHECKING:
    from mvq.models.sampling import SamplingConfig
    from mvq.models.vqgan import VQGAN
    from mvq.inference.pipeline import MVQPipeline

# Pictures are enlarged (nearest neighbour, integer factor) to at least about this many pixels.
DISPLAY_SIZE = 256
# Frames that show where successive tokens land.
TOKEN_ORDER_FRAMES = 8


def display_scale(resolution: int) -> int:
    """Integer enlargement that makes a `resolution`-pixel image about DISPLAY_SIZE pixels wide."""
    return enlargement(resolution, DISPLAY_SIZE)


def shown(images: torch.Tensor) -> np.ndarray:
    """B×3×R×R images in [-1, 1] → B×H×W×3 uint8 pictures as the page shows them (enlarged)."""
    return to_uint8_hwc(enlarge(images, display_scale(images.shape[-1])))


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def score_colour_scale(width: int = DISPLAY_SIZE, height: int = 14) -> np.ndarray:
    """The score heat-map's colours for scores 0 → 1, left to right, as over a mid-grey image."""
    scores = torch.linspace(0, 1, width).expand(1, height, width)
    return to_uint8_hwc(score_heatmap(torch.zeros(1, 3, height, width), scores))[0]


@dataclass
class TokenizeView:
    """An image through the tokenizer: the pictures (enlarged) and the numbers the page shows."""

    model_input: np.ndarray
    kept_cells: np.ndarray
    scores: np.ndarray
    reconstruction: np.ndarray
    num_tokens: int
    num_cells: int
    psnr: float


@torch.no_grad()
def tokenize_view(vae: MQVAE | VQGAN, pixels: np.ndarray, keep: int | None = None,
                  psnr_target: float | None = None) -> TokenizeView:
    """R×R×3 uint8 image → kept cells over it, score heat-map, reconstruction, token count, PSNR.

    An MQ-VAE keeps `keep` cells (default its K), or with `psnr_target` the fewest cells whose
    reconstruction reaches that PSNR (`mvq.models.keep_budget.smallest_keep`)."""
    images = from_uint8_hwc(pixels).to(_device(vae))
    if psnr_target is not None:
        keep = int(smallest_keep(vae, images, psnr_at_least(psnr_target))[0][0])
    out = vae(images) if keep is None else vae(images, keep=keep)
    reconstruction = out.reconstruction.float().clamp(-1, 1)
    value = float(psnr(to_uint8(reconstruction), to_uint8(images))[0])
    pictures = shown(torch.cat([images, keep_mask_overlay(images, out.keep_mask),
                                score_heatmap(images, out.scores), reconstruction]))
    return TokenizeView(model_input=pictures[0], kept_cells=pictures[1], scores=pictures[2],
                        reconstruction=pictures[3], num_tokens=int(out.codes.shape[1]),
                        num_cells=vae.config.num_cells, psnr=value)


def sample_pictures(pipeline: MVQPipeline, count: int, label: int | None, seed: int,
                    sampling: SamplingConfig) -> np.ndarray:
    """`count` samples (all of class `label` for class-conditional models), enlarged: count×H×W×3 uint8."""
    labels = None if label is None else [label] * count
    images = pipeline(n=count, labels=labels, seed=seed, batch_size=count, sampling=sampling)
    return shown(from_uint8_hwc(images))


def shows_token_order(pipeline: MVQPipeline) -> bool:
    """Whether the token-order frames mean something for these models.

    Only an MQ-VAE decodes an image from part of its tokens (a VQGAN needs a code at every
    cell), and only a Position-Transformer chooses where tokens land (without one they fill
    the grid in raster order).
    """
    return isinstance(pipeline.vae, MQVAE) and pipeline.stackformer.config.has_position_transformer


@dataclass
class TokenOrderFrames:
    """The first sample decoded from the first `tokens[i]` of its tokens, frame by frame (enlarged)."""

    pictures: np.ndarray  # F×H×W×3 uint8; cells holding no token yet are darkened
    tokens: list[int]
    num_cells: int


@torch.no_grad()
def token_order_frames(pipeline: MVQPipeline, label: int | None, seed: int, sampling: SamplingConfig,
                       frames: int = TOKEN_ORDER_FRAMES) -> TokenOrderFrames:
    """The first sample of `sample_pictures` decoded from its first K/frames, 2K/frames, ..., K tokens.

    Cells holding no token yet are darkened, so the frames show where successive tokens land; the
    last frame holds all K tokens, and the N − K cells that never get one stay dark (the decoder
    fills them in from the tokens around them).
    """
    if not shows_token_order(pipeline):
        raise UserError("the token-order frames need an MQ-VAE and a Stackformer with a Position-Transformer "
                        "(these models decode full grids in raster order)")
    vae, g = pipeline.vae, pipeline.vae.config.grid_size
    with pipeline.precision_context():
        codes, positions = pipeline.stackformer.generate(1, labels=None if label is None else [label],
                                                         sampling=sampling, generator=[sample_generator(seed, 0)])
        k = codes.shape[1]
        steps = sorted({max(1, round(k * (i + 1) / frames)) for i in range(frames)})
        frames_decoded = []
        for step in steps:  # a handful of decodes of one image, for display
            image = vae.detokenize(codes[:, :step], positions[:, :step]).float().clamp(-1, 1)
            placed = keep_mask_from_positions(positions[:, :step], g * g).view(1, g, g)
            frames_decoded.append(keep_mask_overlay(image, placed))
    return TokenOrderFrames(shown(torch.cat(frames_decoded)), steps, g * g)


@dataclass
class CompletionView:
    """The input, its kept cells (the rest darkened), then the completions (enlarged); and the prefix length."""

    pictures: np.ndarray  # (2 + count)×H×W×3 uint8
    kept_tokens: int


@torch.no_grad()
def completion_view(pipeline: MVQPipeline, pixels: np.ndarray, keep_rows: int, label: int | None, seed: int,
                    count: int, sampling: SamplingConfig) -> CompletionView:
    """Keep the image's tokens in its first `keep_rows` grid rows and let the Stackformer continue `count` times."""
    images = from_uint8_hwc(pixels).to(pipeline.device)
    pictures = completion_pictures(pipeline, images, keep_rows, None if label is None else [label], count, seed,
                                   sampling)
    shown_pictures = shown(torch.cat([images, pictures.overlays, pictures.completions[0]]))
    return CompletionView(shown_pictures, int(pictures.kept_tokens[0]))
