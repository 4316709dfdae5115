"""Pictures of what the MQ-VAE does: keep-mask overlays and score heat-maps, image grids.

Small models' pictures (the demo's are 16 px) are enlarged by an integer factor, every pixel a
square block, so a page or figure shows every cell sharply: `enlarge` is the one place that does it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from mvq.storage.atomic import atomic_write
from mvq.nn.masker import keep_mask_from_positions

if TYPE_CHECKING:
    from PIL import Image

    from mvq.models.sampling import SamplingConfig
    from mvq.inference.pipeline import MVQPipeline


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


# Text in figures: the font size, and the gap around labels (pixels).
LABEL_FONT_SIZE = 13
LABEL_GAP = 6


def fit_scale(resolution: int, columns: int, width: int, margin: int = 0, pad: int = 2, largest: int = 8) -> int:
    """The largest integer enlargement (up to `largest`) with which `columns` pictures and a margin fit `width`."""
    scale = (width - margin - pad) // columns - pad
    return max(1, min(largest, scale // resolution))


def labelled_figure(rows: list[torch.Tensor], row_labels: Sequence[str], scale: int,
                    column_labels: Sequence[str] | None = None, pad: int = 2) -> Image.Image:
    """Rows of pictures (each B×3×H×W in [-1, 1]) enlarged by `scale`, a label left of each row, beside it.

    Labels stand in margins of their own, never over a picture; every pixel of a picture is a
    scale×scale block (nearest neighbour), so the figure stays sharp shown at its own size.
    """
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=LABEL_FONT_SIZE)
    columns = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[-2] * scale, rows[0].shape[-1] * scale
    left = max([int(font.getlength(t)) for t in row_labels] + [0]) + 2 * LABEL_GAP
    top = LABEL_FONT_SIZE + 2 * LABEL_GAP if column_labels else 0
    canvas = Image.new("RGB", (left + columns * (w + pad) + pad, top + len(rows) * (h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, text in enumerate(column_labels or []):
        draw.text((left + pad + c * (w + pad) + w // 2, top // 2), text, fill="black", font=font, anchor="mm")
    for r, (pictures, text) in enumerate(zip(rows, row_labels)):
        y = top + pad + r * (h + pad)
        draw.text((LABEL_GAP, y + h // 2), text, fill="black", font=font, anchor="lm")
        array = ((enlarge(pictures.detach().float().cpu().clamp(-1, 1), scale) + 1) * 127.5).round().byte()
        for c, picture in enumerate(array.permute(0, 2, 3, 1).numpy()):
            canvas.paste(Image.fromarray(picture), (left + pad + c * (w + pad), y))
    return canvas


def save_figure(figure: Image.Image, path: str | Path) -> Path:
    """Save a PIL figure as PNG, atomically."""
    return atomic_write(path, lambda tmp: figure.save(tmp, format="PNG"))


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
