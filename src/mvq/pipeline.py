"""Class labels → images: a Stackformer samples (code, position) tokens, its MQ-VAE decodes them.

    pipe = MVQPipeline.from_pretrained("runs/stackformer/export", "runs/mqvae/export")
    images = pipe(labels=[207, 360, 387], seed=0)          # uint8, N×R×R×3

Every sample draws its randomness from its own generator, seeded from (seed, sample index),
so a given seed gives the same images whatever the batch size.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from mvq.models.mqvae import MQVAE
from mvq.models.stackformer import Stackformer


def sample_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of sample `index` of a run seeded with `seed` (independent streams per sample)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2 ** 63 - 1))


def balanced_labels(n: int, num_classes: int) -> list[int]:
    """0, 1, ..., num_classes-1, 0, 1, ...: every class equally often (up to one) among n samples."""
    return [i % num_classes for i in range(n)]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """B×3×R×R images in [-1, 1] → B×R×R×3 uint8 (the layout FID evaluators read)."""
    from mvq.evaluation.image_metrics import to_uint8 as quantize

    return quantize(images.float()).permute(0, 2, 3, 1).cpu().numpy()


class MVQPipeline:
    """Sampling pipeline of a Stackformer and the MQ-VAE whose tokens it was trained on."""

    def __init__(self, stackformer: Stackformer, vae: MQVAE):
        s, v = stackformer.config, vae.config
        mismatches = [f"{name}: Stackformer {a} vs MQ-VAE {b}" for name, a, b in (
            ("codebook_size", s.codebook_size, v.codebook_size),
            ("grid_size", s.grid_size, v.grid_size),
            ("num_tokens", s.num_tokens, v.num_tokens)) if a != b]
        if mismatches:
            raise ValueError("the Stackformer was not trained on this MQ-VAE's tokens (" + "; ".join(mismatches) + ")")
        self.stackformer = stackformer.eval()
        self.vae = vae.eval()

    @classmethod
    def from_pretrained(cls, stackformer_dir: str | os.PathLike, vae_dir: str | os.PathLike,
                        device: torch.device | str | None = None) -> "MVQPipeline":
        """Load both pretrained folders (default device: the GPU when there is one)."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(Stackformer.from_pretrained(stackformer_dir, map_location=device),
                   MQVAE.from_pretrained(vae_dir, map_location=device))

    @property
    def device(self) -> torch.device:
        return self.stackformer.code_embedding.weight.device

    @property
    def num_classes(self) -> int:
        return self.stackformer.config.num_classes

    def _resolve_labels(self, n: int | None, labels: Sequence[int] | None) -> tuple[int, list[int] | None]:
        if self.num_classes == 0:
            if labels is not None:
                raise ValueError("this Stackformer is unconditional: pass no labels")
            if n is None:
                raise ValueError("pass n, the number of images to sample")
            return n, None
        if labels is None:
            raise ValueError(f"this Stackformer is class-conditional ({self.num_classes} classes): pass labels "
                             f"(e.g. balanced_labels(n, {self.num_classes}))")
        labels = [int(x) for x in labels]
        if n is not None and n != len(labels):
            raise ValueError(f"n = {n} but {len(labels)} labels were given")
        bad = [x for x in labels if not 0 <= x < self.num_classes]
        if bad:
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}; got {bad[:5]}")
        return len(labels), labels

    @torch.no_grad()
    def batches(self, n: int | None = None, labels: Sequence[int] | None = None, seed: int = 0,
                batch_size: int = 16, **sampling: Any) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (index of the first sample, uint8 images B×R×R×3) batch by batch.

        `sampling` goes to `Stackformer.generate` (temperature, top_k, top_p, position_*,
        cfg_scale, raster_constraint, use_cache).
        """
        n, labels = self._resolve_labels(n, labels)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            generators = [sample_generator(seed, i) for i in range(start, stop)]
            batch_labels = None if labels is None else labels[start:stop]
            codes, positions = self.stackformer.generate(stop - start, labels=batch_labels, generator=generators,
                                                         **sampling)
            yield start, to_uint8(self.vae.detokenize(codes, positions))

    def __call__(self, n: int | None = None, labels: Sequence[int] | None = None, seed: int = 0,
                 batch_size: int = 16, **sampling: Any) -> np.ndarray:
        """Sample images: `n` of them (unconditional) or one per label → uint8 N×R×R×3."""
        parts = [images for _, images in self.batches(n, labels, seed, batch_size, **sampling)]
        r = self.vae.config.resolution
        return np.concatenate(parts) if parts else np.zeros((0, r, r, 3), dtype=np.uint8)
