"""Causal GPT blocks (pre-LN, fused attention) with an optional key/value cache.

One `TransformerStack` serves both training (the whole sequence at once, causal mask) and
incremental decoding (a few new tokens per call, earlier keys and values read from a
`KVCache`), so a decoding step costs one token instead of the whole prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """Pre-allocated keys and values of every layer of one stack, filled left to right.

    `length` is the number of positions already written. It is a Python int, so advancing
    it never synchronises with the device.
    """

    def __init__(self, num_layers: int, batch_size: int, heads: int, max_length: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        shape = (num_layers, batch_size, heads, max_length, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.max_length = max_length
        self.length = 0

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' keys/values of `layer`; return all keys/values so far (views)."""
        start, end = self.length, self.length + keys.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; cannot write up to {end}")
        self.keys[layer, :, :, start:end] = keys
        self.values[layer, :, :, start:end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        self.length += num_tokens


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through `scaled_dot_product_attention`."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.write(layer, k, v)
        dropout_p = self.dropout if self.training else 0.0
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=t > 1)
        elif t == 1:  # one new token sees every earlier one: no mask needed
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        else:  # several new tokens after a cached prefix: new token i sees the prefix and new tokens <= i
            allowed = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: width → 4·width → width with exact GELU."""

    def __init__(self, dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim)
        self.proj = nn.Linear(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache, layer)
        return x + self.mlp(self.norm2(x))


class TransformerStack(nn.Module):
    """A causal stack of `Block`s. With a cache, `x` holds only the new tokens."""

    def __init__(self, dim: int, heads: int, layers: int, dropout: float = 0.0):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))

    def new_cache(self, batch_size: int, max_length: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache sized for `batch_size` sequences of up to `max_length` tokens."""
        return KVCache(len(self.blocks), batch_size, self.heads, max_length, self.dim // self.heads,
                       device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.advance(x.shape[1])
        return x
