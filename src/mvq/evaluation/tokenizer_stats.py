"""What a tokenizer does with a dataset, accumulated batch by batch: PSNR, code histogram, keep scores.

One accumulator for stage-1 validation, `mvq eval recon` and the demo, so the three report
the same numbers the same way. Sums stay on the compute device (no host syncs while
updating) in float64; under torch.distributed `all_reduce` adds the ranks' sums, so a
sharded run reports what one process over all images would.
"""

from __future__ import annotations

from typing import Any

import torch

from mvq.distributed import all_reduce_sum
from mvq.errors import InvalidInputError
from mvq.evaluation.codebook import codebook_usage_from_counts
from mvq.evaluation.image_metrics import psnr


class TokenizerStatistics:
    """Running sums: images, PSNR, code counts, keep-scores of kept and of masked cells."""

    _SUMS = ("images", "psnr_sum", "kept_score", "kept_cells", "masked_score", "masked_cells")

    def __init__(self, codebook_size: int, device: torch.device | str = "cpu"):
        for name in self._SUMS:
            setattr(self, name, torch.zeros((), dtype=torch.float64, device=device))
        self.code_counts = torch.zeros(codebook_size, dtype=torch.float64, device=device)

    def update(self, output: Any, originals: torch.Tensor, reconstructions: torch.Tensor) -> None:
        """Add a batch: `output` has `codes`, `keep_mask` and `scores` (an MQ-VAE output); PSNR compares
        `originals` with `reconstructions` (both uint8, or both float in [-1, 1])."""
        b = originals.shape[0]
        self.images += b
        self.psnr_sum += psnr(originals, reconstructions).sum()
        # index_add_ into the fixed-size histogram: bincount's output size depends on the data (a host sync on GPU).
        codes = output.codes.reshape(-1)
        self.code_counts.index_add_(0, codes, torch.ones_like(codes, dtype=self.code_counts.dtype))
        keep = output.keep_mask.reshape(b, -1)
        scores = output.scores.reshape(b, -1).double()
        self.kept_score += (scores * keep).sum()
        self.kept_cells += keep.sum()
        self.masked_score += (scores * ~keep).sum()
        self.masked_cells += (~keep).sum()

    def all_reduce(self) -> None:
        """Sum over all ranks (nothing to do in a single process)."""
        names = [*self._SUMS, "code_counts"]
        for name, value in zip(names, all_reduce_sum(*(getattr(self, n) for n in names))):
            setattr(self, name, value)

    @property
    def num_images(self) -> int:
        return int(self.images.item())

    def summary(self) -> dict[str, Any]:
        """num_images, psnr (mean dB), codebook usage/perplexity/used codes/size, mean keep-scores."""
        n = self.num_images
        if n == 0:
            raise InvalidInputError("no images were evaluated")
        usage = codebook_usage_from_counts(self.code_counts)

        def mean(total: torch.Tensor, count: torch.Tensor) -> float | None:
            return float(total / count) if count > 0 else None

        return {"num_images": n, "psnr": float(self.psnr_sum / n),
                "codebook_usage_percent": usage["usage_percent"], "codebook_perplexity": usage["perplexity"],
                "used_codes": usage["used_codes"], "codebook_size": usage["codebook_size"],
                "keep_score_kept": mean(self.kept_score, self.kept_cells),
                "keep_score_masked": mean(self.masked_score, self.masked_cells)}
