"""Choosing an MQ-VAE's token budget per image: the fewest kept cells that meet a quality target.

An any-K MQ-VAE ranks all cells once; keeping more of the ranking can only add tokens (the cells
kept at a budget are a subset of those at every larger one). So the budget an image needs is found
by bisection over that one ranking: reconstruct at the middle count, keep the half that still holds
the answer, about log2(N) batched passes in all. Quality that is not monotone in the count (an
under-trained model) makes the answer a count that meets the target while one fewer does not,
not necessarily the smallest such count.

    counts, met = smallest_keep(vae, images, psnr_at_least(24.0))
    codes, positions = vae.tokenize(images, keep=counts)     # rows of different lengths, -1 padded

`score_mass_keep` is the one-pass estimate: no reconstruction, only the importance scores. An image
keeps the fewest best-ranked cells that hold a share `mass` of its total score; `calibrate_mass`
picks the share on held-out images so that a given fraction of them meets the target.
"""

from __future__ import annotations

from typing import Callable

import torch

from mvq.errors import InvalidInputError
from mvq.evaluation.image_metrics import psnr, to_uint8
from mvq.models.mqvae import MQVAE

# Reconstructions, inputs (both B×3×R×R in [-1, 1]) → B booleans: does each reconstruction meet the target?
QualityTarget = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def psnr_at_least(db: float) -> QualityTarget:
    """PSNR of the 8-bit reconstruction against the 8-bit input of at least `db` dB."""
    def meets(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return psnr(to_uint8(reconstruction.clamp(-1, 1)), to_uint8(images)) >= db
    return meets


def lpips_at_most(value: float, lpips: torch.nn.Module) -> QualityTarget:
    """LPIPS distance (a `mvq.losses.perceptual.LPIPS`, real weights) to the input of at most `value`."""
    def meets(reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return lpips(reconstruction.clamp(-1, 1), images).flatten() <= value
    return meets


def parse_quality_target(text: str, lpips: Callable[[], torch.nn.Module] | None = None) -> QualityTarget:
    """"psnr=24" (dB, at least) or "lpips=0.2" (at most; `lpips` builds the network) → a target."""
    metric, _, number = text.partition("=")
    try:
        value = float(number)
    except ValueError:
        value = float("nan")
    if metric == "psnr" and value == value:
        return psnr_at_least(value)
    if metric == "lpips" and value == value and lpips is not None:
        return lpips_at_most(value, lpips())
    raise InvalidInputError(f"a quality target is psnr=DB (at least) or lpips=DISTANCE (at most), got {text!r}")


@torch.no_grad()
def smallest_keep(vae: MQVAE, images: torch.Tensor, target: QualityTarget, low: int = 1,
                  high: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the fewest kept cells in [low, high] (default high: N, every cell) whose reconstruction
    meets `target`, by bisection over the image's one ranking of cells → (counts B long, met B bool).

    An image that misses the target even at `high` gets `high`, and `met` says False.
    """
    n = vae.config.num_cells
    high = n if high is None else high
    if not 1 <= low <= high <= n:
        raise InvalidInputError(f"the keep range must satisfy 1 ≤ low ≤ high ≤ {n}, got {low}..{high}")
    b = images.shape[0]
    lo = torch.full((b,), low, dtype=torch.long, device=images.device)
    hi = torch.full((b,), high, dtype=torch.long, device=images.device)
    while bool((lo < hi).any()):  # invariant: if any count in [lo, hi] meets the target, hi does
        mid = (lo + hi) // 2
        meets = target(vae(images, keep=mid).reconstruction.float(), images)
        hi = torch.where(meets & (lo < hi), mid, hi)
        lo = torch.where(~meets & (lo < hi), mid + 1, lo)
    met = target(vae(images, keep=hi).reconstruction.float(), images)
    return hi, met


@torch.no_grad()
def score_mass_keep(vae: MQVAE, images: torch.Tensor, mass: float, low: int = 1, high: int | None = None
                    ) -> torch.Tensor:
    """Per image, the fewest best-ranked cells whose scores sum to at least `mass` (in (0, 1]) of all its
    cells' scores, within [low, high]: one encoder pass, no reconstruction."""
    if not 0 < mass <= 1:
        raise InvalidInputError(f"the score mass must be in (0, 1], got {mass}")
    n = vae.config.num_cells
    high = n if high is None else high
    scores = vae.masker.score_net(vae.encoder(images)).float()  # B×N in (0, 1)
    ranked = scores.sort(dim=1, descending=True, stable=True).values
    share = ranked.cumsum(1) / ranked.sum(1, keepdim=True)
    counts = (share < mass - 1e-6).sum(1) + 1  # the first count whose share reaches `mass`
    return counts.clamp(low, high)


@torch.no_grad()
def calibrate_mass(vae: MQVAE, images: torch.Tensor, target: QualityTarget, fraction: float,
                   low: int = 1, high: int | None = None, steps: int = 12) -> float:
    """The smallest score mass (bisection over (0, 1]) with which at least `fraction` of `images` meet
    `target` at the `score_mass_keep` budget."""
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        counts = score_mass_keep(vae, images, mid, low, high)
        met = target(vae(images, keep=counts).reconstruction.float(), images).float().mean()
        lo, hi = (lo, mid) if float(met) >= fraction else (mid, hi)
    return hi
