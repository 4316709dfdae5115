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

from mvq.distributed import all_reduce_sum, rank_and_world_size
from mvq.errors import InvalidInputError
from mvq.evaluation.frechet import GaussianAccumulator, frechet_distance
from mvq.evaluation.image_metrics import from_uint8, ssim, to_uint8
from mvq.evaluation.images import check_count, evaluation_indices
from mvq.evaluation.inception import FEATURE_DIM
from mvq.evaluation.tokenizer_stats import TokenizerStatistics


def _images_of(batch: Any) -> torch.Tensor:
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


@torch.inference_mode()
def evaluate_reconstruction(model: nn.Module, dataset: torch.utils.data.Dataset, *,
                            inception: nn.Module | None = None, lpips: nn.Module | None = None,
                            num_images: int | None = None, batch_size: int = 16,
                            device: torch.device | str = "cpu", num_workers: int = 0, seed: int = 0,
                            progress: bool = False, keep: int | float | None = None) -> dict[str, Any]:
    """rFID (reconstructions vs originals), PSNR, SSIM, L1, LPIPS, codebook usage/perplexity, keep scores.

    `model(images)` must return an object with `reconstruction`, `codes`, `keep_mask` and
    `scores` (an MQ-VAE output); `model.config.codebook_size` sizes the code histogram. `keep`
    evaluates an MQ-VAE at another token budget than its K (a count or a ratio; any-K).
    `dataset` items are dicts with an "image" in [-1, 1] (or tensors). rFID is skipped without
    `inception`, LPIPS without `lpips`. Under torch.distributed every rank must call this.
    """
    from tqdm import tqdm

    check_count("num_images", num_images, 2 if inception is not None else 1)
    check_count("batch_size", batch_size, 1)
    check_count("num_workers", num_workers, 0)
    device = torch.device(device)
    rank, world_size = rank_and_world_size()
    indices = evaluation_indices(len(dataset), num_images, seed)
    shard = torch.utils.data.Subset(dataset, indices[rank::world_size])
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    model = model.to(device).eval()
    stats = TokenizerStatistics(model.config.codebook_size, device)
    z = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
    ssim_sum, lpips_sum, l1_sum = z(), z(), z()
    originals = reconstructed = None
    if inception is not None:  # sized by the network's feature width (2048 for FID's Inception)
        width = getattr(inception, "feature_dim", FEATURE_DIM)
        originals, reconstructed = GaussianAccumulator(width, device), GaussianAccumulator(width, device)

    for batch in tqdm(loader, desc="reconstruction", unit="batch", disable=not progress or rank != 0,
                      file=sys.stderr):
        images = _images_of(batch).to(device, non_blocking=True)
        out = model(images) if keep is None else model(images, keep=keep)
        x8, r8 = to_uint8(images), to_uint8(out.reconstruction.float())
        stats.update(out, x8, r8)
        ssim_sum += ssim(x8, r8).sum()
        l1_sum += (from_uint8(x8) - from_uint8(r8)).abs().flatten(1).mean(1).double().sum()
        if lpips is not None:
            lpips_sum += lpips(from_uint8(x8), from_uint8(r8)).double().sum()
        if inception is not None:
            originals.update(inception(x8)[0])
            reconstructed.update(inception(r8)[0])

    stats.all_reduce()
    ssim_sum, lpips_sum, l1_sum = all_reduce_sum(ssim_sum, lpips_sum, l1_sum)
    n = stats.num_images
    if n == 0:
        raise InvalidInputError("the dataset has no images to evaluate")
    summary = stats.summary()
    result: dict[str, Any] = {"num_images": n}
    if inception is not None:
        originals.all_reduce()
        reconstructed.all_reduce()
        result["rfid"] = frechet_distance(*originals.mean_and_covariance(), *reconstructed.mean_and_covariance())
    result["psnr"] = summary["psnr"]
    result["ssim"] = float(ssim_sum / n)
    result["l1"] = float(l1_sum / n)
    if lpips is not None:
        result["lpips"] = float(lpips_sum / n)
    result.update({k: summary[k] for k in ("codebook_usage_percent", "codebook_perplexity", "used_codes",
                                           "codebook_size", "keep_score_kept", "keep_score_masked")})
    return result
