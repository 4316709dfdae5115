"""Vector quantizers: an EMA codebook with restarts of unused codes (docs/method.md §3), and a learned one.

Self-contained: `EMAVectorQuantizer(codebook_size, dim)(z)` with z of shape (..., dim)
returns straight-through quantized vectors, the codebook loss and the code indices.
Under torch.distributed the EMA statistics are all-reduced and restart candidates come
from rank 0, so every rank holds the same codebook after every step.

`LearnedVectorQuantizer` has the same interface; its codebook is a parameter trained by
gradient, with VQGAN's (taming-transformers') loss — the baseline's other quantizer choice.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class EMAVectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer; the codebook is a buffer updated by exponential moving averages."""

    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 commitment_beta: float = 0.25, restart_unused_codes: bool = True):
        super().__init__()
        self.codebook_size, self.dim = codebook_size, dim
        self.decay, self.eps, self.beta = decay, eps, commitment_beta
        self.restart_unused_codes = restart_unused_codes
        codebook = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("codebook", codebook)
        self.register_buffer("cluster_size_ema", torch.zeros(codebook_size))
        self.register_buffer("embed_ema", codebook.clone())

    @torch.no_grad()
    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the closest codebook entry (L2) for every vector of z (..., dim)."""
        flat = z.reshape(-1, self.dim).float()
        codebook = self.codebook.float()
        # ‖z‖² is constant per row and does not change the argmin.
        distances = torch.addmm((codebook * codebook).sum(1), flat, codebook.t(), alpha=-2.0)
        return distances.argmin(dim=1).view(z.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for integer codes of any shape."""
        return F.embedding(codes, self.codebook)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = self.nearest_codes(z)
        quantized = self.lookup(codes).to(z.dtype)
        if self.training:
            self._update(z.detach().reshape(-1, self.dim).float(), codes.reshape(-1))
        # The second term carries no gradient under EMA; it is kept so loss values match VQGAN-style
        # reports. Both terms are means over all elements.
        loss = self.beta * F.mse_loss(z, quantized.detach()) + F.mse_loss(quantized, z.detach())
        quantized = z + (quantized - z).detach()  # straight-through estimator
        return quantized, loss, codes

    @torch.no_grad()
    def _update(self, vectors: torch.Tensor, codes: torch.Tensor) -> None:
        counts = torch.zeros(self.codebook_size, device=vectors.device, dtype=vectors.dtype)
        counts.index_add_(0, codes, torch.ones_like(codes, dtype=vectors.dtype))
        sums = torch.zeros(self.codebook_size, self.dim, device=vectors.device, dtype=vectors.dtype)
        sums.index_add_(0, codes, vectors)
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size_ema.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_ema.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        if self.restart_unused_codes:
            self._restart_unused(vectors)
        total = self.cluster_size_ema.sum()
        smoothed = total * (self.cluster_size_ema + self.eps) / (total + self.codebook_size * self.eps)
        self.codebook.copy_(self.embed_ema / smoothed.unsqueeze(1))

    @torch.no_grad()
    def _restart_unused(self, vectors: torch.Tensor) -> None:
        """Replace codes whose EMA count fell below 1 by randomly chosen current input vectors."""
        candidates = self._restart_candidates(vectors)
        if _distributed():
            dist.broadcast(candidates, src=0)
        unused = (self.cluster_size_ema < 1.0).unsqueeze(1)
        self.embed_ema.copy_(torch.where(unused, candidates, self.embed_ema))
        self.cluster_size_ema.masked_fill_(unused.squeeze(1), 1.0)

    def _restart_candidates(self, vectors: torch.Tensor) -> torch.Tensor:
        n = vectors.shape[0]
        if n < self.codebook_size:
            # Too few vectors: tile them and add small uniform noise so restarted codes differ.
            repeats = -(-self.codebook_size // n)
            vectors = vectors.repeat(repeats, 1)
            vectors = vectors + torch.rand_like(vectors) * (0.01 / math.sqrt(self.dim))
        order = torch.randperm(vectors.shape[0], device=vectors.device)[: self.codebook_size]
        return vectors[order].contiguous()


class LearnedVectorQuantizer(nn.Module):
    """Nearest-neighbour quantizer whose codebook is an `nn.Embedding` learned by gradient (VQGAN's).

    Loss (VQGAN's "legacy" form, kept so converted models report the same values):
    mean((sg(q) − z)²) + β·mean((q − sg(z))²), i.e. the commitment term has weight 1 and the
    codebook term β. Straight-through gradient to z.
    """

    def __init__(self, codebook_size: int, dim: int, commitment_beta: float = 0.25):
        super().__init__()
        self.codebook_size, self.dim, self.beta = codebook_size, dim, commitment_beta
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook vectors (codebook_size × dim), named as in `EMAVectorQuantizer`."""
        return self.embedding.weight

    @torch.no_grad()
    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the closest codebook entry (L2) for every vector of z (..., dim)."""
        flat = z.reshape(-1, self.dim).float()
        codebook = self.embedding.weight.float()
        distances = torch.addmm((codebook * codebook).sum(1), flat, codebook.t(), alpha=-2.0)
        return distances.argmin(dim=1).view(z.shape[:-1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for integer codes of any shape."""
        return self.embedding(codes)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = self.nearest_codes(z)
        quantized = self.lookup(codes).to(z.dtype)
        loss = F.mse_loss(quantized.detach(), z) + self.beta * F.mse_loss(quantized, z.detach())
        quantized = z + (quantized - z).detach()  # straight-through estimator
        return quantized, loss, codes
