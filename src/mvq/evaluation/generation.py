"""FID / IS / KID of generated samples against reference images or precomputed statistics."""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from mvq.data.build import dataset_from_path
from mvq.errors import InvalidInputError
from mvq.evaluation.frechet import GaussianAccumulator, frechet_distance, has_statistics, load_statistics
from mvq.evaluation.image_metrics import to_uint8
from mvq.evaluation.images import ImageSet, check_count, evaluation_indices
from mvq.evaluation.inception import FEATURE_DIM, InceptionV3
from mvq.evaluation.scores import inception_score, kernel_inception_distance

FID_IMAGE_COUNT = 50_000  # the count published FIDs use; fewer images bias FID upwards


class InceptionOutputs:
    """Gaussian statistics of pool features, plus the raw features/logits when asked for."""

    def __init__(self, device: torch.device | str, keep_features: bool = False, keep_logits: bool = False,
                 feature_dim: int = FEATURE_DIM):
        self.gaussian = GaussianAccumulator(feature_dim, device)
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


def feature_dim_of(network: torch.nn.Module) -> int:
    """Width of the network's pool features (2048 for FID's Inception), known before it runs."""
    return int(getattr(network, "feature_dim", FEATURE_DIM))


def run_inception(batches: Iterable[torch.Tensor], inception: InceptionV3, device: torch.device | str = "cpu", *,
                  keep_features: bool = False, keep_logits: bool = False, progress: bool = False,
                  total: int | None = None, desc: str = "inception") -> InceptionOutputs:
    """Feed uint8 batches B×3×R×R through Inception and accumulate what the metrics need."""
    from tqdm import tqdm

    outputs = InceptionOutputs(device, keep_features, keep_logits, feature_dim_of(inception))
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


class ReferenceImages:
    """The images reference statistics are made of, opened and checked before any network is built.

    `reference` is the `split` of a YAML config's `data:` section (evaluation transforms: resize,
    centre crop), an image folder, or an .npz/.npy of images; with `num_images`, a seeded random
    subset of that many images is used.
    """

    def __init__(self, reference: str | os.PathLike, *, resolution: int | None = None, split: str = "train",
                 num_images: int | None = None, num_workers: int = 0, overrides: Sequence[str] = ()):
        check_count("num_images", num_images, 2, " (a covariance needs two images)")
        check_count("resolution", resolution, 1)
        check_count("num_workers", num_workers, 0)
        self.path = Path(reference)
        self.num_workers = num_workers
        if self.path.suffix in (".yaml", ".yml"):
            dataset = dataset_from_path(self.path, split, resolution, overrides)
            self._dataset: torch.utils.data.Dataset | None = torch.utils.data.Subset(
                dataset, evaluation_indices(len(dataset), num_images))
            self._images, available = None, len(dataset)
            self.total = len(self._dataset)
        elif overrides:
            raise InvalidInputError(f"{' '.join(overrides)}: key=value changes apply to a YAML config's data "
                                    f"section, and {self.path} is not one")
        else:
            self._dataset = None
            self._images = ImageSet(self.path, resolution, num_workers)
            available = len(self._images)
            self.total = available if num_images is None else min(available, num_images)
        self._num_images = num_images
        if self.total < 2:
            raise InvalidInputError(f"reference statistics need at least 2 images (a covariance); {self.path} has "
                                    f"{available}")

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """uint8 batches B×3×R×R of the chosen images."""
        if self._images is not None:
            yield from self._images.batches(batch_size, self._num_images)
            return

        loader = torch.utils.data.DataLoader(self._dataset, batch_size=batch_size, num_workers=self.num_workers)
        for batch in loader:
            yield to_uint8(batch["image"])


def image_statistics(images: ReferenceImages, inception: InceptionV3, *, batch_size: int = 64,
                     device: torch.device | str = "cpu", progress: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, number of images) of Inception pool features of already opened reference images."""
    check_count("batch_size", batch_size, 1)
    outputs = run_inception(images.batches(batch_size), inception, device, progress=progress, total=images.total,
                            desc="reference")
    mu, sigma = outputs.gaussian.mean_and_covariance()
    return mu, sigma, outputs.num_images


def reference_statistics(reference: str | os.PathLike, inception: InceptionV3, *, resolution: int | None = None,
                         split: str = "train", batch_size: int = 64, device: torch.device | str = "cpu",
                         num_images: int | None = None, num_workers: int = 0,
                         progress: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu, sigma, number of images) of Inception pool features of an image folder, an .npz of images,
    or the `split` of a YAML config's `data:` section (evaluation transforms: resize, centre crop).

    With `num_images`, a seeded random subset of that many images is used.
    """
    check_count("batch_size", batch_size, 1)
    images = ReferenceImages(reference, resolution=resolution, split=split, num_images=num_images,
                             num_workers=num_workers)
    return image_statistics(images, inception, batch_size=batch_size, device=device, progress=progress)


@dataclass
class GenerationInputs:
    """Samples and reference of an FID/IS/KID run, opened and checked; no network has seen them yet."""

    samples: ImageSet
    sample_path: Path
    count: int                      # samples to evaluate (all, or a seeded subset of num_samples)
    reference: Path
    statistics: tuple[np.ndarray, np.ndarray, dict] | None  # precomputed (mu, sigma, metadata)
    reference_images: ImageSet | None  # needed for KID, and for FID without statistics
    feature_dim: int
    kid: bool


def open_generation_inputs(samples: str | os.PathLike, reference: str | os.PathLike, *,
                           feature_dim: int = FEATURE_DIM, num_samples: int | None = None,
                           resolution: int | None = None, kid: bool = False,
                           num_workers: int = 0) -> GenerationInputs:
    """Open and check every input of an FID run, so that a bad one is refused before any network runs.

    Refused here: a missing, unreadable or truncated file; arrays that are not uint8 N×R×R×3;
    fewer than 2 samples or reference images; reference statistics that are not a Gaussian's or
    not of `feature_dim` features (the width of the network that will be used); KID without
    reference images. Reference images are resized to the samples' size unless `resolution` is given.
    """
    check_count("num_samples", num_samples, 1)
    check_count("resolution", resolution, 1)
    check_count("num_workers", num_workers, 0)
    sample_set = ImageSet(samples, resolution, num_workers)
    count = len(sample_set) if num_samples is None else min(len(sample_set), num_samples)
    if count < 2:
        chosen = f"; {num_samples} asked for" if num_samples is not None and num_samples < len(sample_set) else ""
        raise InvalidInputError(f"FID needs at least 2 samples (a covariance); {samples} has {len(sample_set)}{chosen}")
    reference = Path(reference)
    statistics = load_statistics(reference, feature_dim) if has_statistics(reference) else None
    reference_images = None
    if statistics is None or kid:
        try:
            reference_images = ImageSet(reference, resolution or _image_size(sample_set), num_workers)
        except InvalidInputError as exc:
            if statistics is not None:
                raise InvalidInputError(f"KID needs reference images; {reference} has none ({exc})") from exc
            raise
        if len(reference_images) < 2:
            raise InvalidInputError(f"FID needs at least 2 reference images (a covariance); {reference} has "
                                    f"{len(reference_images)}")
    return GenerationInputs(sample_set, Path(samples), count, reference, statistics, reference_images, feature_dim,
                            kid)


def _check_scoring(batch_size: int, isc_splits: int, kid_subsets: int, kid_subset_size: int) -> None:
    check_count("batch_size", batch_size, 1)
    check_count("isc_splits", isc_splits, 1)
    check_count("kid_subsets", kid_subsets, 1)
    check_count("kid_subset_size", kid_subset_size, 2, " (KID compares pairs of images)")


def evaluate_generation(samples: str | os.PathLike, reference: str | os.PathLike, inception: InceptionV3, *,
                        batch_size: int = 64, device: torch.device | str = "cpu", num_samples: int | None = None,
                        resolution: int | None = None, isc_splits: int = 10, kid: bool = False,
                        kid_subsets: int = 100, kid_subset_size: int = 1000, num_workers: int = 0,
                        progress: bool = False) -> dict:
    """FID and Inception Score of `samples` (folder or .npz), FID (and KID) against `reference`.

    `reference` is an image folder, an .npz/.npy of images (resized and centre-cropped to the
    samples' size unless `resolution` is given), or an .npz with statistics `mu`, `sigma`
    (from `mvq eval stats`, or an ADM reference batch). When an .npz holds statistics, FID
    uses them; KID always needs reference images. Every input is checked before `inception`
    runs (`open_generation_inputs`).
    """
    _check_scoring(batch_size, isc_splits, kid_subsets, kid_subset_size)
    inputs = open_generation_inputs(samples, reference, feature_dim=feature_dim_of(inception),
                                    num_samples=num_samples, resolution=resolution, kid=kid, num_workers=num_workers)
    return score_generation(inputs, inception, batch_size=batch_size, device=device, isc_splits=isc_splits,
                            kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, progress=progress)


def score_generation(inputs: GenerationInputs, inception: InceptionV3, *, batch_size: int = 64,
                     device: torch.device | str = "cpu", isc_splits: int = 10, kid_subsets: int = 100,
                     kid_subset_size: int = 1000, progress: bool = False) -> dict:
    """FID, IS (and KID) of inputs opened by `open_generation_inputs`: the part that runs `inception`."""
    _check_scoring(batch_size, isc_splits, kid_subsets, kid_subset_size)
    if feature_dim_of(inception) != inputs.feature_dim:
        raise InvalidInputError(f"the inputs were checked for {inputs.feature_dim}-dimensional features, the network "
                                f"gives {feature_dim_of(inception)}")
    has_logits = getattr(inception, "has_logits", True)  # Inception weights without the IS head: no IS
    kid = inputs.kid
    count = inputs.count
    sample_out = run_inception(inputs.samples.batches(batch_size, count), inception, device, keep_features=kid,
                               keep_logits=has_logits, progress=progress, total=count, desc="samples")
    mu, sigma = sample_out.gaussian.mean_and_covariance()
    n = sample_out.num_images
    if n < FID_IMAGE_COUNT:
        warnings.warn(f"FID from {n} samples: published FIDs use {FID_IMAGE_COUNT}; fewer samples give a higher "
                      "(biased) FID that is only comparable with FIDs from the same number of samples",
                      stacklevel=2)
    result: dict = {"num_samples": n, "samples": str(inputs.sample_path), "reference": str(inputs.reference)}

    if inputs.statistics is not None:
        ref_mu, ref_sigma, meta = inputs.statistics
        result["reference_statistics"] = "precomputed"
        result["num_reference"] = meta.get("num_images")
    ref_set = inputs.reference_images
    if ref_set is not None:
        ref_out = run_inception(ref_set.batches(batch_size), inception, device, keep_features=kid,
                                progress=progress, total=len(ref_set), desc="reference")
        if inputs.statistics is None:
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
