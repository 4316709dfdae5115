"""A plain GPT over every cell of the grid: the full-grid baseline that masked quantization is measured against.

One stack of mvq's transformer blocks, raster order, one code per cell (N steps instead of K),
class start token, same width and total depth as the Stackformer it is compared with. Its
cached sampler does exactly what a Stackformer step does for its code: logits → top-k → top-p →
inverse-CDF sample, through mvq's own sampling function; there is no position to choose.
"""

from __future__ import annotations

import torch
from torch import nn

from mvq.models.sampling import sample_from_logits
from mvq.nn.transformer import KVCache, TransformerStack


class FullGridGPT(nn.Module):
    def __init__(self, codebook_size: int, num_cells: int, num_classes: int, layers: int, dim: int, heads: int):
        super().__init__()
        self.codebook_size, self.num_cells = codebook_size, num_cells
        self.token_embedding = nn.Embedding(codebook_size + num_classes, dim)
        self.step_embedding = nn.Embedding(num_cells, dim)
        self.transformer = TransformerStack(dim, heads, layers)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, codebook_size + num_classes, bias=False)

    def new_cache(self, batch_size: int) -> KVCache:
        return self.transformer.new_cache(batch_size, self.num_cells, self.head.weight.device, self.head.weight.dtype)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, steps: int | None = None, first_step: int = 0,
                 cache: KVCache | None = None, top_k: int = 100, top_p: float = 0.95) -> torch.Tensor:
        """Sample codes for steps first_step … first_step+steps-1 (B×steps).

        With first_step > 0 the cache is taken as already holding that many earlier tokens (whatever
        it contains: the time of a step does not depend on it), so the cost of any part of a long
        sequence can be timed without decoding everything before it; pass a `cache` to reuse one.
        """
        b = labels.shape[0]
        device = labels.device
        steps = self.num_cells - first_step if steps is None else steps
        cache = cache or self.new_cache(b)
        cache.length = first_step
        uniforms = torch.rand(b, steps, device=device)
        token = labels + self.codebook_size
        codes = torch.empty(b, steps, dtype=torch.long, device=device)
        for i in range(steps):
            t = first_step + i
            x = self.token_embedding(token[:, None]) + self.step_embedding.weight[t:t + 1]
            hidden = self.transformer(x, cache)
            logits = self.head(self.norm(hidden[:, -1]))[:, :self.codebook_size]
            token = sample_from_logits(logits.float(), top_k, top_p, uniforms[:, i])
            codes[:, i] = token
        return codes
