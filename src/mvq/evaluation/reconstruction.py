"""Tokenizer evaluation: how well an MQ-VAE reconstructs a dataset, and how it uses its codebook.

Every rank evaluates its own shard (every world_size-th image); sums are all-reduced, so the
numbers equal a single-process run over the same images. Reconstructions and originals are
quantised to 8 bits first, as saved PNGs would be, and every metric sees those.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from mvq.evaluation.codebook import codebook_usage_from_counts
from mvq.distributed import all_reduce_sum, rank_and_world_size
from mvq.evaluation.frechet import GaussianAccumulator, frechet_distance
from mvq.evaluation.image_metrics import from_uint8, psnr, ssim, to_uint8
from mvq.evaluation.images import evaluation_indices
from mvq.evaluation.inception import FEATURE_DIM


def _images_of(batch: Any) -> torch.Tensor:
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


class _Sums:
    """Per-rank running sums on the compute device (no host syncs inside the loop)."""

    def __init__(self, codebook_size: int, device: torch.device):
        z = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
        self.images, self.psnr, self.ssim, self.lpips = z(), z(), z(), z()
        self.kept_score, self.kept_cells, self.masked_score, self.masked_cells = z(), z(), z(), z()
        self.code_counts = torch.zeros(codebook_size, dtype=torch.float64, device=device)

    def names(self) -> list[str]:
        return list(vars(self))

    def all_reduce(self) -> None:
        names = self.names()
        for name, value in zip(names, all_reduce_sum(*(getattr(self, n) for n in names))):
            setattr(self, name, value)


@torch.inference_mode()
def evaluate_reconstruction(model: nn.Module, dataset: torch.utils.data.Dataset, *,
                            inception: nn.Module | None = None, lpips: nn.Module | None = None,
                            num_images: int | None = None, batch_size: int = 16,
                            device: torch.device | str = "cpu", num_workers: int = 0, seed: int = 0,
                            progress: bool = False) -> dict[str, Any]:
    """rFID (reconstructions vs originals), PSNR, SSIM, LPIPS, codebook usage/perplexity, keep scores.

    `model(images)` must return an object with `reconstruction`, `codes`, `keep_mask` and
    `scores` (an MQ-VAE output); `model.config.codebook_size` sizes the code histogram.
    `dataset` items are dicts with an "image" in [-1, 1] (or tensors). rFID is skipped without
    `inception`, LPIPS without `lpips`. Under torch.distributed every rank must call this.
    """
    from tqdm import tqdm

    device = torch.device(device)
    rank, world_size = rank_and_world_size()
    indices = evaluation_indices(len(dataset), num_images, seed)
    shard = torch.utils.data.Subset(dataset, indices[rank::world_size])
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    model = model.to(device).eval()
    sums = _Sums(model.config.codebook_size, device)
    originals = reconstructed = None
    if inception is not None:  # sized by the network's feature width (2048 for FID's Inception)
        width = getattr(inception, "feature_dim", FEATURE_DIM)
        originals, reconstructed = GaussianAccumulator(width, device), GaussianAccumulator(width, device)

    for batch in tqdm(loader, desc="reconstruction", unit="batch", disable=not progress or rank != 0,
                      file=sys.stderr):
        images = _images_of(batch).to(device, non_blocking=True)
        out = model(images)
        x8, r8 = to_uint8(images), to_uint8(out.reconstruction.float())
        sums.images += images.shape[0]
        sums.psnr += psnr(x8, r8).sum()
        sums.ssim += ssim(x8, r8).sum()
        if lpips is not None:
            sums.lpips += lpips(from_uint8(x8), from_uint8(r8)).double().sum()
        sums.code_counts += torch.bincount(out.codes.reshape(-1), minlength=sums.code_counts.numel()).double()
        keep, scores = out.keep_mask.reshape(images.shape[0], -1), out.scores.reshape(images.shape[0], -1).double()
        sums.kept_score += (scores * keep).sum()
        sums.kept_cells += keep.sum()
        sums.masked_score += (scores * ~keep).sum()
        sums.masked_cells += (~keep).sum()
        if inception is not None:
            originals.update(inception(x8)[0])
            reconstructed.update(inception(r8)[0])

    sums.all_reduce()
    n = int(sums.images.item())
    if n == 0:
        raise ValueError("the dataset has no images to evaluate")
    result: dict[str, Any] = {"num_images": n}
    if inception is not None:
        originals.all_reduce()
        reconstructed.all_reduce()
        result["rfid"] = frechet_distance(*originals.mean_and_covariance(), *reconstructed.mean_and_covariance())
    result["psnr"] = float(sums.psnr / n)
    result["ssim"] = float(sums.ssim / n)
    if lpips is not None:
        result["lpips"] = float(sums.lpips / n)
    usage = codebook_usage_from_counts(sums.code_counts)
    result.update(codebook_usage_percent=usage["usage_percent"], codebook_perplexity=usage["perplexity"],
                  used_codes=usage["used_codes"], codebook_size=usage["codebook_size"])
    result["keep_score_kept"] = float(sums.kept_score / sums.kept_cells) if sums.kept_cells > 0 else None
    result["keep_score_masked"] = float(sums.masked_score / sums.masked_cells) if sums.masked_cells > 0 else None
    return result
