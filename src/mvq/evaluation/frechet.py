"""Gaussian feature statistics and the Fréchet distance between them (the "F" of FID).

Statistics are accumulated as float64 running sums, so a dataset is streamed once, shards
on several ranks add up exactly, and the result equals mean/covariance of all features.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from mvq.errors import InvalidInputError, MissingInputError


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖mu1 − mu2‖² + tr(Σ1) + tr(Σ2) − 2·tr((Σ1 Σ2)^½), in float64.

    tr((Σ1 Σ2)^½) is computed as tr((A Σ2 A)^½) with A = Σ1^½: the matrix inside has the same
    eigenvalues as Σ1 Σ2 but is symmetric positive semi-definite, so a symmetric eigen-solver
    gives them without the complex round-off a general matrix square root produces on
    rank-deficient covariances (fewer images than feature dimensions). The linear algebra runs
    in torch (CPU), so it follows `torch.set_num_threads` like the rest of the evaluation.
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
    diff = mu1 - mu2
    s1, s2 = torch.from_numpy(sigma1), torch.from_numpy(sigma2)
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    eigenvalues = _drop_round_off(torch.linalg.eigvalsh((inner + inner.T) / 2))
    trace_sqrt_product = float(eigenvalues.sqrt().sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product)


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
        from mvq.distributed import all_reduce_sum

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
    from mvq.atomic import atomic_write

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
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"{path} is not a readable .npz file ({exc}); is it truncated?") from exc


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read (mu, sigma, metadata) from an .npz written by `save_statistics` (or any npz with mu/sigma)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"statistics file not found: {path}")
    with np.load(path) as data:
        if not {"mu", "sigma"} <= set(data.files):
            raise InvalidInputError(f"{path} holds {sorted(data.files)}, not reference statistics (mu, sigma); "
                                    "make them with `mvq eval stats`")
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        metadata = {k: data[k].item() for k in data.files if k not in ("mu", "sigma") and data[k].ndim == 0}
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise InvalidInputError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit together")
    return mu, sigma, metadata
