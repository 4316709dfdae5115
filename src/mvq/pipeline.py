"""Class labels → images: a Stackformer samples (code, position) tokens, its MQ-VAE decodes them.

    pipe = MVQPipeline.from_pretrained("runs/stackformer/export", "runs/mqvae/export")
    images = pipe(labels=[207, 360, 387], seed=0)          # uint8, N×R×R×3

Every sample draws its randomness from its own generator, seeded from (seed, sample index),
so a given seed gives the same images whatever the batch size. Sampling settings travel as
one `SamplingConfig` (or as its fields by name) down to `Stackformer.generate`.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from mvq.models.labels import labels_tensor
from mvq.models.mqvae import MQVAE
from mvq.models.sampling import SamplingConfig, SamplingError
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
            raise SamplingError("the Stackformer was not trained on this MQ-VAE's tokens (" + "; ".join(mismatches) + ")")
        self.stackformer = stackformer.eval()
        self.vae = vae.eval()

    @classmethod
    def from_pretrained(cls, stackformer_dir: str | os.PathLike, vae_dir: str | os.PathLike,
                        device: torch.device | str | None = None,
                        allow_tokenizer_mismatch: bool = False) -> "MVQPipeline":
        """Load both pretrained folders (default device: this process's GPU when there is one).

        A Stackformer folder that records its MQ-VAE's weights fingerprint (tokenizer.json) is
        refused with any other MQ-VAE — same shapes, other weights decode its tokens into
        garbage — unless `allow_tokenizer_mismatch`, which only warns.
        """
        from mvq.distributed import resolve_device

        device = resolve_device("auto" if device is None else str(device))
        pipe = cls(Stackformer.from_pretrained(stackformer_dir, map_location=device),
                   MQVAE.from_pretrained(vae_dir, map_location=device))
        check_tokenizer(stackformer_dir, vae_dir, pipe.vae, allow_tokenizer_mismatch)
        return pipe

    @property
    def device(self) -> torch.device:
        return self.stackformer.code_embedding.weight.device

    @property
    def num_classes(self) -> int:
        return self.stackformer.config.num_classes

    def _resolve_labels(self, n: int | None, labels: Sequence[int] | None) -> tuple[int, list[int] | None]:
        if labels is None:
            if self.num_classes:
                raise SamplingError(f"this Stackformer is class-conditional ({self.num_classes} classes): pass "
                                    f"labels (e.g. balanced_labels(n, {self.num_classes}))")
            if n is None:
                raise SamplingError("pass n, the number of images to sample")
            return n, None
        count = len(labels)
        if n is not None and n != count:
            raise SamplingError(f"n = {n} but {count} labels were given")
        return count, labels_tensor(list(labels), self.num_classes, count).tolist()

    @torch.no_grad()
    def batches(self, n: int | None = None, labels: Sequence[int] | None = None, seed: int = 0,
                batch_size: int = 16, sampling: SamplingConfig | None = None,
                **settings: Any) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (index of the first sample, uint8 images B×R×R×3) batch by batch.

        `sampling` (and settings by name, which override it) go to `Stackformer.generate`.
        """
        n, labels = self._resolve_labels(n, labels)
        if batch_size < 1:
            raise SamplingError(f"batch_size must be at least 1, got {batch_size}")
        sampling = (sampling or SamplingConfig()).replace(**settings)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            generators = [sample_generator(seed, i) for i in range(start, stop)]
            batch_labels = None if labels is None else labels[start:stop]
            codes, positions = self.stackformer.generate(stop - start, labels=batch_labels, sampling=sampling,
                                                         generator=generators)
            yield start, to_uint8(self.vae.detokenize(codes, positions))

    def __call__(self, n: int | None = None, labels: Sequence[int] | None = None, seed: int = 0,
                 batch_size: int = 16, sampling: SamplingConfig | None = None, **settings: Any) -> np.ndarray:
        """Sample images: `n` of them (unconditional) or one per label → uint8 N×R×R×3."""
        parts = [images for _, images in self.batches(n, labels, seed, batch_size, sampling, **settings)]
        r = self.vae.config.resolution
        return np.concatenate(parts) if parts else np.zeros((0, r, r, 3), dtype=np.uint8)


def check_tokenizer(stackformer_dir: str | os.PathLike, vae_dir: str | os.PathLike, vae: MQVAE,
                    allow_mismatch: bool = False) -> None:
    """Refuse (or, with `allow_mismatch`, warn about) an MQ-VAE other than the one the Stackformer learnt from."""
    from mvq.models.pretrained import read_tokenizer_record, weights_fingerprint

    record = read_tokenizer_record(stackformer_dir)
    if record is None:
        return  # folders exported before fingerprints were recorded: nothing to compare
    expected = record["mqvae_fingerprint"]
    if weights_fingerprint(vae) == expected:
        return
    message = (f"the Stackformer in {stackformer_dir} was trained on the tokens of a different MQ-VAE than {vae_dir} "
               f"(weights fingerprint {expected[:12]}…, this one {weights_fingerprint(vae)[:12]}…): its samples "
               "would decode into noise")
    if not allow_mismatch:
        raise SamplingError(message + "; pass the MQ-VAE it was trained with, or --allow-tokenizer-mismatch "
                                  "(allow_tokenizer_mismatch=True) to sample anyway")
    warnings.warn(message, UserWarning, stacklevel=2)
