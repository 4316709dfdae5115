"""Class labels → images: a Stackformer samples (code, position) tokens, its MQ-VAE decodes them.

    pipe = MVQPipeline.from_pretrained("runs/stackformer/export", "runs/mqvae/export")
    images = pipe(labels=[207, 360, 387], seed=0)          # uint8, N×R×R×3
    edits = pipe.complete(photos, keep_rows=16, labels=[1], n=4)   # uint8, B×4×R×R×3

Every sample draws its randomness from its own generator, seeded from (seed, sample index),
so a given seed gives the same images whatever the batch size. Sampling settings travel as
one `SamplingConfig` (or as its fields by name) down to `Stackformer.generate`. Completion
keeps an image's own tokens in its first grid rows — the exact raster prefix the Stackformer
was trained to continue — and samples the rest.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, ContextManager, Iterator, Sequence

import numpy as np
import torch

from mvq.config import recorded_config_differences
from mvq.data.token_store import decodes_any_budget, tokenizer_name, vae_token_geometry
from mvq.distributed import resolve_device
from mvq.errors import UserError
from mvq.evaluation.image_metrics import from_uint8_hwc, to_uint8_hwc
from mvq.models.labels import labels_list, labels_tensor
from mvq.models.mqvae import MQVAE
from mvq.models.pretrained import TOKENIZER_NAME, read_tokenizer_record, weights_fingerprint
from mvq.models.sampling import SamplingConfig, SamplingError
from mvq.models.zoo import tokenizer_of
from mvq.models.stackformer import Stackformer
from mvq.models.tokenizer import load_tokenizer
from mvq.models.vqgan import VQGAN


def sample_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of sample `index` of a run seeded with `seed` (independent streams per sample)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2 ** 63 - 1))


def balanced_labels(n: int, num_classes: int) -> list[int]:
    """0, 1, ..., num_classes-1, 0, 1, ...: every class equally often (up to one) among n samples."""
    return [i % num_classes for i in range(n)]


# Images are decoded in batches of this many (padded): their pixels then never depend on the sampling batch size.
DECODE_BATCH = 8

# --precision: the dtype the models run in under autocast (None: plain fp32).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The autocast context of `precision` on `device` (fp16 only on CUDA: the CPU has no fast fp16)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype == torch.float16 and device.type != "cuda":
        raise UserError(f"precision fp16 needs a CUDA GPU (this run is on {device.type}): use bf16 or fp32")
    return torch.autocast(device.type, dtype=dtype)


class MVQPipeline:
    """Sampling pipeline of a Stackformer and the MQ-VAE whose tokens it was trained on."""

    def __init__(self, stackformer: Stackformer, vae: MQVAE | VQGAN, precision: str = "fp32"):
        s, v = vae_token_geometry(stackformer.config), vae_token_geometry(vae.config)
        tokenizer = tokenizer_name(vae.config)
        if decodes_any_budget(vae.config, s["num_tokens"]):
            v["num_tokens"] = s["num_tokens"]  # learnt from a store of another budget
        mismatches = [f"{name}: Stackformer {s[name]} vs {tokenizer} {v[name]}" for name in s if s[name] != v[name]]
        if mismatches:
            raise SamplingError(f"the Stackformer was not trained on this {tokenizer}'s tokens (" + "; ".join(mismatches)
                                + ")")
        self.stackformer = stackformer.eval()
        self.vae = vae.eval()
        self.precision = precision
        autocast(self.device, precision)  # refuse an unknown or unavailable precision now, not mid-run

    @classmethod
    def from_pretrained(cls, stackformer_dir: str | os.PathLike, vae_dir: str | os.PathLike | None = None,
                        device: torch.device | str | None = None,
                        allow_tokenizer_mismatch: bool = False, precision: str = "fp32") -> "MVQPipeline":
        """Load both pretrained folders (default device: this process's GPU when there is one). Each may be
        a folder, a zoo name or a Hub id; without `vae_dir`, the zoo tokenizer the Stackformer learnt from.

        A Stackformer folder that records its MQ-VAE's weights fingerprint (tokenizer.json) is
        refused with any other MQ-VAE — same shapes, other weights decode its tokens into
        garbage — unless `allow_tokenizer_mismatch`, which only warns.
        """
        if vae_dir is None:
            vae_dir = tokenizer_of(stackformer_dir)
            if vae_dir is None:
                raise SamplingError(f"no zoo tokenizer matches {stackformer_dir}'s tokenizer.json: pass its "
                                    "tokenizer folder as vae_dir")
        device = resolve_device("auto" if device is None else str(device))
        pipe = cls(Stackformer.from_pretrained(stackformer_dir, map_location=device),
                   load_tokenizer(vae_dir, map_location=device), precision=precision)
        check_tokenizer(stackformer_dir, vae_dir, pipe.vae, allow_tokenizer_mismatch)
        return pipe

    @property
    def device(self) -> torch.device:
        return self.stackformer.code_embedding.weight.device

    @property
    def num_classes(self) -> int:
        return self.stackformer.config.num_classes

    def compile(self) -> "MVQPipeline":
        """torch.compile the transformer stacks (dynamic shapes: the cached prefix grows every step).

        A Stackformer without a Position-Transformer (a plain GPT over raster-order tokens) has one.
        """
        for stack in filter(None, (self.stackformer.code_transformer, self.stackformer.position_transformer)):
            stack.compile(dynamic=True)
        return self

    def precision_context(self) -> ContextManager:
        """Autocast in this pipeline's precision (a no-op for fp32)."""
        return autocast(self.device, self.precision)

    def _resolve_labels(self, n: int | None, labels: Sequence[int] | None) -> tuple[int, list[int] | None]:
        """(number of samples, one label per sample or None): `n` of them, or one per label."""
        if n is None and labels is None and not self.num_classes:
            raise SamplingError("pass n, the number of images to sample")
        count = n if n is not None else len(labels) if labels is not None else 1
        return count, labels_list(labels, self.num_classes, count,
                                  ask=f"pass labels (e.g. balanced_labels(n, {self.num_classes}))")

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
            yield start, self.sample_range(start, stop, labels, seed, sampling)

    @torch.no_grad()
    def sample_range(self, start: int, stop: int, labels: Sequence[int] | None, seed: int,
                     sampling: SamplingConfig) -> np.ndarray:
        """Samples start..stop-1 of a run seeded with `seed`, as one batch → uint8 images.

        `labels` are the whole run's labels (or None). The images are those of any other
        batching of the run, which is what lets several processes share one run.
        """
        generators = [sample_generator(seed, i) for i in range(start, stop)]
        batch_labels = None if labels is None else list(labels[start:stop])
        with self.precision_context():
            codes, positions = self.stackformer.generate(stop - start, labels=batch_labels, sampling=sampling,
                                                         generator=generators)
            return to_uint8_hwc(self.decode(codes, positions))

    def __call__(self, n: int | None = None, labels: Sequence[int] | None = None, seed: int = 0,
                 batch_size: int = 16, sampling: SamplingConfig | None = None, **settings: Any) -> np.ndarray:
        """Sample images: `n` of them, or one per label (one label with `n`: n of that class) → uint8 N×R×R×3."""
        parts = [images for _, images in self.batches(n, labels, seed, batch_size, sampling, **settings)]
        r = self.vae.config.resolution
        return np.concatenate(parts) if parts else np.zeros((0, r, r, 3), dtype=np.uint8)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Tokens → images, always in batches of `DECODE_BATCH` (the last one padded with repeats).

        Convolution kernels pick their algorithm by batch size, and another algorithm rounds
        differently: decoding at one fixed batch shape makes every image's pixels the same
        whatever batch it was sampled in, so a run resumed with another batch size is
        byte-identical to an uninterrupted one.
        """
        n = codes.shape[0]
        pieces = []
        for start in range(0, n, DECODE_BATCH):
            rows = torch.arange(start, start + DECODE_BATCH, device=codes.device).clamp(max=n - 1)
            pieces.append(self.vae.detokenize(codes[rows], positions[rows])[:n - start])
        return torch.cat(pieces) if pieces else self.vae.detokenize(codes, positions)

    # ------------------------------------------------------------------------- completion and editing

    def _as_model_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 R×R×3 / B×R×R×3 pixels, or float B×3×R×R in [-1, 1] → float images on the device (their
        values are checked once, by the tokenizer that reads them)."""
        if isinstance(images, np.ndarray) or (isinstance(images, torch.Tensor) and images.dtype == torch.uint8):
            try:
                images = from_uint8_hwc(images)
            except ValueError as exc:
                raise SamplingError(str(exc)) from None
        return images.to(self.device, torch.float32)

    @torch.no_grad()
    def prefix_tokens(self, images: np.ndarray | torch.Tensor, keep_rows: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokenize `images` → (codes B×K, positions B×K, prefix lengths B): the first `lengths[i]`
        tokens of image i are those in its first `keep_rows` grid rows (tokens come in raster order)."""
        g = self.vae.config.grid_size
        if isinstance(keep_rows, bool) or int(keep_rows) != keep_rows or not 0 <= keep_rows <= g:
            raise SamplingError(f"keep_rows must be a whole number of grid rows in 0..{g} (the token grid is "
                                f"{g}×{g}), got {keep_rows}")
        with self.precision_context():
            codes, positions = self.vae.tokenize(self._as_model_images(images))
        lengths = (positions < int(keep_rows) * g).sum(dim=1)
        return codes, positions, lengths

    @torch.no_grad()
    def predict_class(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The most likely class of each image (B labels): argmax over classes of log p(its tokens | class)
        under the Stackformer (class-conditional models only)."""
        if not self.num_classes:
            raise SamplingError("the Stackformer is unconditional: it has no classes to predict")
        with self.precision_context():
            codes, positions = self.vae.tokenize(self._as_model_images(images))
        b, c = codes.shape[0], self.num_classes
        labels = torch.arange(c, device=self.device).repeat_interleave(b)
        with self.precision_context():
            scores = self.stackformer.log_likelihood(codes.repeat(c, 1), positions.repeat(c, 1), labels)
        return scores.view(c, b).argmax(0)

    @torch.no_grad()
    def complete_tokens(self, images: np.ndarray | torch.Tensor, keep_rows: int,
                        labels: Sequence[int] | int | None = None, n: int = 1, seed: int = 0,
                        sampling: SamplingConfig | None = None, first_image: int = 0, **settings: Any
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes B×n×K, positions B×n×K, prefix lengths B): `n` continuations of each image's own
        tokens in its first `keep_rows` grid rows, forced into both stacks' caches.

        Completion j of image i draws from `sample_generator(seed, i·n + j)`, where i counts from
        `first_image` (the index of images[0] in a larger set), so batching does not change
        results. Images whose kept rows hold the same number of tokens are completed in one batch.
        """
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise SamplingError(f"n (completions per image) must be at least 1, got {n}")
        sampling = (sampling or SamplingConfig()).replace(**settings)
        image_codes, image_positions, lengths = self.prefix_tokens(images, keep_rows)
        b, k = image_codes.shape
        label_tensor = labels_tensor(labels, self.num_classes, b, self.device, items="images",
                                     ask="pass labels, the class of each image (or another class, to edit the "
                                         "image into it)")
        codes = torch.empty(b, n, k, dtype=torch.long, device=self.device)
        positions = torch.empty_like(codes)
        for length in sorted(set(lengths.tolist())):  # one generate call per prefix length
            members = (lengths == length).nonzero().flatten()
            rows = members.repeat_interleave(n)
            generators = [sample_generator(seed, (first_image + i) * n + j) for i in members.tolist()
                          for j in range(n)]
            prefix = (image_codes[rows, :length], image_positions[rows, :length]) if length else (None, None)
            with self.precision_context():
                got_codes, got_positions = self.stackformer.generate(
                    len(rows), labels=None if label_tensor is None else label_tensor[rows], sampling=sampling,
                    generator=generators, prefix_codes=prefix[0], prefix_positions=prefix[1])
            codes[members] = got_codes.view(len(members), n, k)
            positions[members] = got_positions.view(len(members), n, k)
        return codes, positions, lengths

    @torch.no_grad()
    def complete(self, images: np.ndarray | torch.Tensor, keep_rows: int, labels: Sequence[int] | int | None = None,
                 n: int = 1, seed: int = 0, sampling: SamplingConfig | None = None, first_image: int = 0,
                 **settings: Any) -> np.ndarray:
        """Complete each image from its first `keep_rows` grid rows → uint8 B×n×R×R×3.

        `images`: uint8 pixels (R×R×3 or B×R×R×3) or float B×3×R×R in [-1, 1] at the MQ-VAE's
        resolution. With a class-conditional model, `labels` (one per image, or one for all)
        may differ from the images' classes: class-swap editing.
        """
        codes, positions, _ = self.complete_tokens(images, keep_rows, labels, n, seed, sampling, first_image,
                                                   **settings)
        b, n, k = codes.shape
        with self.precision_context():
            pixels = to_uint8_hwc(self.decode(codes.view(b * n, k), positions.view(b * n, k)))
        return pixels.reshape(b, n, *pixels.shape[1:])


def check_tokenizer(stackformer_dir: str | os.PathLike, vae_dir: str | os.PathLike, vae: MQVAE | VQGAN,
                    allow_mismatch: bool = False) -> None:
    """Refuse (or, with `allow_mismatch`, warn about) a tokenizer other than the one the Stackformer learnt from.

    The Stackformer's tokenizer.json records that tokenizer's weights fingerprint and config;
    both must match `vae` (same weights under an edited config decode differently). A folder
    without the record cannot be verified, and is refused the same way.
    """
    record = read_tokenizer_record(stackformer_dir)
    if record is None:
        problem = (f"the Stackformer in {stackformer_dir} has no {TOKENIZER_NAME}, so the tokenizer it was trained "
                   f"on cannot be checked against {vae_dir}; export it again from its run (`mvq export RUN OUT`, "
                   f"which writes {TOKENIZER_NAME})")
    else:
        found = weights_fingerprint(vae)
        recorded_config = record.get("tokenizer_config")
        differ = [] if recorded_config is None else recorded_config_differences(vae.config, recorded_config)
        if found != record["tokenizer_fingerprint"]:
            problem = (f"the Stackformer in {stackformer_dir} was trained on the tokens of a different tokenizer "
                       f"than {vae_dir} (weights fingerprint {record['tokenizer_fingerprint'][:12]}…, this one "
                       f"{found[:12]}…): its samples would decode into noise")
        elif differ:
            problem = (f"{vae_dir} has the weights the Stackformer in {stackformer_dir} was trained with, but "
                       f"another config (differs in: {', '.join(differ)}): was its config.json edited? Its tokens "
                       "would decode differently")
        else:
            return
    if not allow_mismatch:
        raise SamplingError(problem + "; pass the tokenizer it was trained with, or --allow-tokenizer-mismatch "
                                      "(allow_tokenizer_mismatch=True) to sample anyway")
    warnings.warn(problem, UserWarning, stacklevel=2)
