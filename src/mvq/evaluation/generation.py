"""FID / IS / KID of generated samples against reference images or precomputed statistics."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from mvq.errors import InvalidInputError
from mvq.evaluation.frechet import GaussianAccumulator, frechet_distance, has_statistics, load_statistics
from mvq.evaluation.images import ImageSet, evaluation_indices
from mvq.evaluation.inception import FEATURE_DIM, InceptionV3
from mvq.evaluation.scores import inception_score, kernel_inception_distance

FID_IMAGE_COUNT = 50_000  # the count published FIDs use; fewer images bias FID upwards


class InceptionOutputs:
    """Gaussian statistics of pool features, plus the raw features/logits when asked for."""

    def __init__(self, device: torch.device | str, keep_features: bool = False, keep_logits: bool = False):
        self.gaussian = GaussianAccumulator(FEATURE_DIM, device)
        self.features: list[torch.Tensor] | None = [] if keep_features else None
        self.logits: list[torch.Tensor] | None = [] if keep_logits else None

    def update(self, pool: torch.Tensor, logits: torch.Tensor) -> None:
        self.gaussian.update(pool)
        if self.features is not None:
            self.features.append(pool.cpu())
        if self.logits is not None:
            self.logits.append(logits.cpu())

    @property
    def num_images(self) -> int:
        return self.gaussian.num_samples

    def all_features(self) -> torch.Tensor:
        return torch.cat(self.features)

    def all_logits(self) -> torch.Tensor:
        return torch.cat(self.logits)


def run_inception(batches: Iterable[torch.Tensor], inception: InceptionV3, device: torch.device | str = "cpu", *,
                  keep_features: bool = False, keep_logits: bool = False, progress: bool = False,
                  total: int | None = None, desc: str = "inception") -> InceptionOutputs:
    """Feed uint8 batches B×3×R×R through Inception and accumulate what the metrics need."""
    from tqdm import tqdm

    outputs = InceptionOutputs(device, keep_features, keep_logits)
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        for batch in batches:
            pool, logits = inception(batch.to(device, non_blocking=True))
            outputs.update(pool, logits)
            bar.update(batch.shape[0])
    return outputs


def _image_size(images: ImageSet) -> int | None:
    """Side of an image of the set (they share one size), when it is square."""
    first = next(images.batches(1, limit=1), None)
    if first is None:
        return None
    height, width = first.shape[-2:]
    return int(height) if height == width else None


def reference_statistics(reference: str | os.PathLike, inception: InceptionV3, *, resolution: int | None = None,
                         split: str = "train", batch_size: int = 64, device: torch.device | str = "cpu",
                         num_images: int | None = None, num_workers: int = 0,
                         progress: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, number of images) of Inception pool features of an image folder, an .npz of images,
    or the `split` of a YAML config's `data:` section (evaluation transforms: resize, centre crop).

    With `num_images`, a seeded random subset of that many images is used.
    """
    path = Path(reference)
    if path.suffix in (".yaml", ".yml"):
        from mvq.data.build import dataset_from_path
        from mvq.evaluation.image_metrics import to_uint8

        dataset = dataset_from_path(path, split, resolution)
        subset = torch.utils.data.Subset(dataset, evaluation_indices(len(dataset), num_images))
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers)
        batches: Iterable[torch.Tensor] = (to_uint8(batch["image"]) for batch in loader)
        total = len(subset)
    else:
        images = ImageSet(path, resolution, num_workers)
        batches, total = images.batches(batch_size, num_images), min(len(images), num_images or len(images))
    outputs = run_inception(batches, inception, device, progress=progress, total=total, desc="reference")
    mu, sigma = outputs.gaussian.mean_and_covariance()
    return mu, sigma, outputs.num_images


def open_reference(reference: str | os.PathLike, sample_set: ImageSet, resolution: int | None, kid: bool,
                   num_workers: int = 0) -> tuple[bool, ImageSet | None]:
    """Check `reference` before any Inception work: (holds precomputed statistics, its images or None).

    Reference images are needed for KID, and for FID when there are no statistics; they are
    resized to the samples' size unless `resolution` is given.
    """
    precomputed = has_statistics(reference)
    if precomputed and not kid:
        return precomputed, None
    try:
        return precomputed, ImageSet(reference, resolution or _image_size(sample_set), num_workers)
    except ValueError as exc:
        if precomputed:
            raise InvalidInputError(f"KID needs reference images; {reference} has none ({exc})") from exc
        raise


def evaluate_generation(samples: str | os.PathLike, reference: str | os.PathLike, inception: InceptionV3, *,
                        batch_size: int = 64, device: torch.device | str = "cpu", num_samples: int | None = None,
                        resolution: int | None = None, isc_splits: int = 10, kid: bool = False,
                        kid_subsets: int = 100, kid_subset_size: int = 1000, num_workers: int = 0,
                        progress: bool = False) -> dict:
    """FID and Inception Score of `samples` (folder or .npz), FID (and KID) against `reference`.

    `reference` is an image folder, an .npz/.npy of images (resized and centre-cropped to the
    samples' size unless `resolution` is given), or an .npz with statistics `mu`, `sigma`
    (from `mvq eval stats`, or an ADM reference batch). When an .npz holds statistics, FID
    uses them; KID always needs reference images.
    """
    has_logits = getattr(inception, "has_logits", True)  # Inception weights without the IS head: no IS
    sample_set = ImageSet(samples, resolution, num_workers)
    precomputed, ref_set = open_reference(reference, sample_set, resolution, kid, num_workers)
    if precomputed:
        ref_mu, ref_sigma, meta = load_statistics(reference)
    count = min(len(sample_set), num_samples or len(sample_set))
    sample_out = run_inception(sample_set.batches(batch_size, count), inception, device, keep_features=kid,
                               keep_logits=has_logits, progress=progress, total=count, desc="samples")
    mu, sigma = sample_out.gaussian.mean_and_covariance()
    n = sample_out.num_images
    if n < FID_IMAGE_COUNT:
        warnings.warn(f"FID from {n} samples: published FIDs use {FID_IMAGE_COUNT}; fewer samples give a higher "
                      "(biased) FID that is only comparable with FIDs from the same number of samples",
                      stacklevel=2)
    result: dict = {"num_samples": n, "samples": str(samples), "reference": str(reference)}

    if precomputed:
        result["reference_statistics"] = "precomputed"
        result["num_reference"] = int(meta["num_images"]) if "num_images" in meta else None
    if ref_set is not None:
        ref_out = run_inception(ref_set.batches(batch_size), inception, device, keep_features=kid,
                                progress=progress, total=len(ref_set), desc="reference")
        if not precomputed:
            ref_mu, ref_sigma = ref_out.gaussian.mean_and_covariance()
            result["reference_statistics"] = "computed from images"
            result["num_reference"] = ref_out.num_images
        if kid:
            size = min(kid_subset_size, n, ref_out.num_images)
            result["kid_mean"], result["kid_std"] = kernel_inception_distance(
                sample_out.all_features(), ref_out.all_features(), kid_subsets, size)
            result["kid_subset_size"] = size

    if ref_mu.shape != mu.shape:
        raise InvalidInputError(f"reference statistics have {ref_mu.shape[0]} dimensions, samples {mu.shape[0]}: "
                                "they were not made with the same feature layer")
    result["fid"] = frechet_distance(mu, sigma, ref_mu, ref_sigma)
    if has_logits:
        splits = min(isc_splits, n)
        result["inception_score_mean"], result["inception_score_std"] = inception_score(sample_out.all_logits(),
                                                                                        splits)
        result["inception_score_splits"] = splits
    else:
        result["inception_score_mean"] = result["inception_score_std"] = None
        result["inception_score_unavailable"] = inception.missing_logits_message
    result["inception_weights"] = str(getattr(inception, "weights_path", ""))
    return result
