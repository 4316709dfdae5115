"""Gaussian feature statistics and the Fréchet distance between them (the "F" of FID).

Statistics are accumulated as float64 running sums, so a dataset is streamed once, shards
on several ranks add up exactly, and the result equals mean/covariance of all features.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from mvq.storage.atomic import atomic_write
from mvq.distributed import all_reduce_sum
from mvq.errors import InvalidInputError, MissingInputError

# Relative tolerance of the symmetry and positive semi-definiteness checks. Covariances of float32
# features have round-off eigenvalues near −1e-7·largest (two-pass or float64 sums) and down to
# about −3e-4·largest (the one-pass float32 formula on features whose mean is five times their
# spread); a matrix that is not a covariance (−I, a sign error) is off by order 1.
PSD_TOLERANCE = 1e-3
# A Fréchet distance below −NEGATIVE_TOLERANCE·(1 + traces) is no round-off: the inputs were not covariances.
NEGATIVE_TOLERANCE = 1e-6
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖mu1 − mu2‖² + tr(Σ1) + tr(Σ2) − 2·tr((Σ1 Σ2)^½), in float64.

    tr((Σ1 Σ2)^½) is computed as tr((A Σ2 A)^½) with A = Σ1^½: the matrix inside has the same
    eigenvalues as Σ1 Σ2 but is symmetric positive semi-definite, so a symmetric eigen-solver
    gives them without the complex round-off a general matrix square root produces on
    rank-deficient covariances (fewer images than feature dimensions). The linear algebra runs
    in torch (CPU), so it follows `torch.set_num_threads` like the rest of the evaluation.

    Arguments that cannot be covariances (asymmetric, a negative variance) are refused; the
    full eigenvalue check of statistics read from a file is `check_statistics`. A result below
    zero beyond round-off is refused too (it means the inputs were not covariances); round-off
    below zero is returned as 0.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise InvalidInputError(f"means must be vectors of the same length, got shapes {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise InvalidInputError(f"covariances must be {d}×{d} to match the means, "
                                f"got {sigma1.shape} and {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise InvalidInputError("statistics contain NaN or infinite values")
    for name, sigma in (("first", sigma1), ("second", sigma2)):
        _check_symmetric(sigma, f"the {name} covariance")
        diagonal = np.diag(sigma)
        if diagonal.size and diagonal.min() < -PSD_TOLERANCE * max(1.0, float(np.abs(diagonal).max())):
            raise InvalidInputError(f"the {name} covariance has a negative variance ({diagonal.min():.3g}): it is "
                                    "not a covariance matrix; recompute the statistics with `mvq eval stats`")
    diff = mu1 - mu2
    s1, s2 = torch.from_numpy(sigma1), torch.from_numpy(sigma2)
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    eigenvalues = _drop_round_off(torch.linalg.eigvalsh((inner + inner.T) / 2))
    trace_sqrt_product = float(eigenvalues.sqrt().sum())
    traces = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2))
    distance = traces - 2.0 * trace_sqrt_product
    if distance < -NEGATIVE_TOLERANCE * (1.0 + abs(traces)):
        raise InvalidInputError(f"the Fréchet distance came out negative ({distance:.6g}): the statistics are not "
                                "those of a Gaussian (a covariance with negative eigenvalues); recompute them "
                                "with `mvq eval stats`")
    return max(distance, 0.0)


def _check_symmetric(sigma: np.ndarray, what: str) -> None:
    """A covariance is symmetric; beyond float32 round-off, the matrix is something else."""
    if sigma.size == 0:
        return
    asymmetry = float(np.abs(sigma - sigma.T).max())
    if asymmetry > PSD_TOLERANCE * max(1.0, float(np.abs(sigma).max())):
        raise InvalidInputError(f"{what} is not symmetric (entries differ from their transposes by up to "
                                f"{asymmetry:.3g}): it is not a covariance matrix")


def check_statistics(mu: np.ndarray, sigma: np.ndarray, source: str = "the statistics",
                     feature_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) as float64 once they are a Gaussian's: a finite real vector and a finite, symmetric,
    positive semi-definite matrix of its size (within `PSD_TOLERANCE`), of `feature_dim` features when given.

    Statistics from a file can be anything; a matrix with negative eigenvalues still gives a
    number (even a negative "FID"), so it is refused here, before it is used.
    """
    mu, sigma = np.asarray(mu), np.asarray(sigma)
    for name, array in (("mu", mu), ("sigma", sigma)):
        if array.dtype.kind not in "biuf":
            raise InvalidInputError(f"{source}: {name} must hold real numbers, got dtype {array.dtype}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    if mu.ndim != 1 or mu.size == 0:
        raise InvalidInputError(f"{source}: mu must be a non-empty vector, got shape {mu.shape}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise InvalidInputError(f"{source}: sigma must be {d}×{d} to match mu, got shape {sigma.shape}")
    if feature_dim is not None and d != feature_dim:
        raise InvalidInputError(f"{source} holds {d}-dimensional statistics, but the feature network gives "
                                f"{feature_dim} features: make them with `mvq eval stats` (the same network)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise InvalidInputError(f"{source} contains NaN or infinite values: recompute it with `mvq eval stats`")
    _check_symmetric(sigma, f"{source}: sigma")
    eigenvalues = torch.linalg.eigvalsh(torch.from_numpy((sigma + sigma.T) / 2))
    smallest, largest = float(eigenvalues.min()), float(eigenvalues.abs().max())
    if smallest < -PSD_TOLERANCE * max(1.0, largest):
        raise InvalidInputError(f"{source}: sigma is not positive semi-definite (eigenvalue {smallest:.3g}, largest "
                                f"magnitude {largest:.3g}), so it is not a covariance matrix; recompute it with "
                                "`mvq eval stats`")
    return mu, sigma


def _drop_round_off(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Set eigenvalues below the numerical-rank tolerance (n·eps·largest) to zero.

    A covariance of fewer images than dimensions has exact zero eigenvalues that come out as
    ±1e-16-sized noise; their square roots (~1e-8 each) would otherwise add up to a visible error.
    """
    tolerance = eigenvalues.numel() * torch.finfo(torch.float64).eps * eigenvalues.max().clamp_min(0.0)
    return torch.where(eigenvalues > tolerance, eigenvalues, torch.zeros_like(eigenvalues))


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix."""
    eigenvalues, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * _drop_round_off(eigenvalues).sqrt()) @ vectors.T


class GaussianAccumulator:
    """Running count, sum and sum of outer products of feature vectors (float64)."""

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        self.dim = dim
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of N×dim features."""
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected N×{self.dim} features, got {tuple(features.shape)}")
        f = features.to(device=self.sum.device, dtype=torch.float64)
        self.count += f.shape[0]
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def all_reduce(self) -> None:
        """Sum the statistics over all ranks (no-op without an initialised process group)."""
        self.count, self.sum, self.outer = all_reduce_sum(self.count, self.sum, self.outer)

    @property
    def num_samples(self) -> int:
        return int(self.count.item())

    def mean_and_covariance(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (as numpy's `np.cov`), as float64 numpy arrays."""
        n = self.num_samples
        if n < 2:
            raise InvalidInputError(f"need at least 2 images for a covariance, got {n}")
        mean = self.sum / n
        covariance = (self.outer - n * torch.outer(mean, mean)) / (n - 1)
        return mean.cpu().numpy(), covariance.cpu().numpy()


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **metadata) -> Path:
    """Write reference statistics as an .npz with `mu`, `sigma` and scalar metadata entries."""
    path = Path(path)
    if path.suffix != ".npz":
        raise InvalidInputError(f"statistics are written as .npz; got {path}")

    arrays = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64),
              **{k: np.asarray(v) for k, v in metadata.items()}}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary name
            np.savez(f, **arrays)

    return atomic_write(path, write)


def has_statistics(path: str | os.PathLike) -> bool:
    """True for an .npz that holds FID statistics `mu` and `sigma` (with or without images)."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path) as data:
            return {"mu", "sigma"} <= set(data.files)
    except _READ_ERRORS as exc:
        raise _unreadable_npz(path, exc) from exc


def _unreadable_npz(path: Path, exc: BaseException) -> InvalidInputError:
    """The one line for an .npz that numpy or zipfile cannot read (most often a partly copied file)."""
    return InvalidInputError(f"{path} is not a readable {path.suffix or '.npz'} file ({exc}); is it truncated? "
                             "Copy or write it again")


def load_statistics(path: str | os.PathLike, feature_dim: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read (mu, sigma, metadata) from an .npz written by `save_statistics` (or any npz with mu/sigma).

    The statistics are checked as they are read (`check_statistics`, against `feature_dim`
    when given), so a broken file is refused before any image goes through a network.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"statistics file not found: {path}")
    try:
        data = np.load(path)
        if not isinstance(data, np.lib.npyio.NpzFile):  # an .npy: one bare array
            raise InvalidInputError(f"{path} is not an .npz of reference statistics (mu, sigma); make one "
                                    "with `mvq eval stats`")
        with data:
            if not {"mu", "sigma"} <= set(data.files):
                raise InvalidInputError(f"{path} holds {sorted(data.files)}, not reference statistics (mu, sigma); "
                                        "make them with `mvq eval stats`")
            mu, sigma = data["mu"], data["sigma"]
            metadata = {}
            for key in data.files:
                if key not in ("mu", "sigma") and data[key].ndim == 0:
                    metadata[key] = data[key].item()
    except InvalidInputError:
        raise
    except _READ_ERRORS as exc:
        raise _unreadable_npz(path, exc) from exc
    mu, sigma = check_statistics(mu, sigma, str(path), feature_dim)
    if "num_images" in metadata:
        metadata["num_images"] = _image_count(metadata["num_images"], path)
    return mu, sigma, metadata


def _image_count(value: object, path: Path) -> int:
    """The `num_images` entry as a whole number ≥ 2 (a covariance needs two images); it is reported with FID."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value != int(value) or value < 2:
        raise InvalidInputError(f"{path}: num_images must be a whole number of at least 2, got {value!r}; "
                                "recompute the statistics with `mvq eval stats`")
    return int(value)
