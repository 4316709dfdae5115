"""Pictures of what the MQ-VAE does: keep-mask overlays and score heat-maps, image grids.

Small models' pictures (the demo's are 16 px) are enlarged by an integer factor, every pixel a
square block, so a page or figure shows every cell sharply: `enlarge` is the one place that does it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from mvq.atomic import atomic_write
from mvq.nn.masker import keep_mask_from_positions

if TYPE_CHECKING:
    from mvq.models.sampling import SamplingConfig
    from mvq.pipeline import MVQPipeline


def enlargement(resolution: int, size: int) -> int:
    """The integer factor that makes a `resolution`-pixel picture about `size` pixels wide (at least 1)."""
    return max(1, size // resolution)


def enlarge(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Pictures (...×H×W, any dtype) with every pixel repeated as a scale×scale block (nearest neighbour)."""
    if scale == 1:
        return images
    return images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def keep_mask_overlay(images: torch.Tensor, keep_mask: torch.Tensor, dim: float = 0.25) -> torch.Tensor:
    """Masked cells darkened to `dim` brightness, kept cells as they are (images in [-1, 1])."""
    mask = F.interpolate(keep_mask.float().unsqueeze(1), size=images.shape[-2:], mode="nearest")
    unit = (images + 1) / 2
    return (unit * (dim + (1 - dim) * mask)) * 2 - 1


def score_heatmap(images: torch.Tensor, scores: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """Scores (B×H×W, normalised per image) as a red-yellow heat-map blended over a grey image."""
    s = scores.float()
    lo = s.flatten(1).min(1).values.view(-1, 1, 1)
    hi = s.flatten(1).max(1).values.view(-1, 1, 1)
    s = ((s - lo) / (hi - lo).clamp_min(1e-6)).unsqueeze(1)
    s = F.interpolate(s, size=images.shape[-2:], mode="nearest")
    heat = torch.cat([torch.ones_like(s), s, torch.zeros_like(s)], dim=1)  # black→red→yellow
    heat = heat * s.clamp_min(0.15)
    grey = ((images + 1) / 2).mean(1, keepdim=True).expand_as(heat)
    return ((1 - alpha) * grey + alpha * heat) * 2 - 1


def image_grid(rows: list[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Stack equally sized image batches (each B×3×H×W in [-1, 1]) as grid rows → 3×H'×W' in [0, 1]."""
    from torchvision.utils import make_grid

    batch = torch.cat([r.detach().float().cpu().clamp(-1, 1) for r in rows])
    return make_grid((batch + 1) / 2, nrow=rows[0].shape[0], padding=pad, pad_value=1.0)


def save_image(grid: torch.Tensor, path: str | Path) -> Path:
    """Save a 3×H×W grid in [0, 1] as PNG, atomically (never half a file under `path`)."""
    from PIL import Image

    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def reconstruction_rows(model, images: torch.Tensor, keep: int | float | None = None) -> list[torch.Tensor]:
    """Inputs, reconstructions, keep-mask overlays and score heat-maps for a batch (model in eval mode),
    keeping the model's K cells or `keep` (an MQ-VAE only)."""
    with torch.no_grad():
        out = model(images) if keep is None else model(images, keep=keep)
    return [images, out.reconstruction.float().clamp(-1, 1), keep_mask_overlay(images, out.keep_mask),
            score_heatmap(images, out.scores)]


class CompletionPictures(NamedTuple):
    """Completions of B images and what they were completed from (pictures in [-1, 1])."""

    overlays: torch.Tensor     # B×3×R×R: each image with the cells of its kept tokens, the rest darkened
    completions: torch.Tensor  # B×n×3×R×R
    kept_tokens: torch.Tensor  # B: how many of each image's own tokens were kept


def completion_pictures(pipe: MVQPipeline, images: torch.Tensor, keep_rows: int, labels: Sequence[int] | None,
                        n: int, seed: int, sampling: SamplingConfig | None = None, first_image: int = 0
                        ) -> CompletionPictures:
    """Complete images B×3×R×R in [-1, 1] from their first `keep_rows` grid rows, as pictures."""
    codes, positions, lengths = pipe.complete_tokens(images, keep_rows, labels, n, seed, sampling, first_image)
    b, n, k = codes.shape
    g = pipe.vae.config.grid_size
    # The kept tokens are the first `lengths[i]` of every completion; the others are sent to a spare cell g·g.
    in_prefix = torch.arange(k, device=positions.device) < lengths[:, None]
    kept = keep_mask_from_positions(torch.where(in_prefix, positions[:, 0], g * g), g * g + 1)[:, :g * g]
    with pipe.precision_context(), torch.no_grad():
        completions = pipe.vae.detokenize(codes.view(b * n, k), positions.view(b * n, k)).float().clamp(-1, 1)
    overlays = keep_mask_overlay(images.to(positions.device), kept.view(b, g, g))
    return CompletionPictures(overlays, completions.view(b, n, *completions.shape[1:]), lengths)
