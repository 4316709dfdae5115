"""Stackformer: autoregressive model over the MQ-VAE's K (code, position) pairs (design §2.6).

The sequence is the kept pairs in raster order, preceded by a start token (the class, or
one start-of-sequence token) at the start position N. At step t:

    Code-Transformer      input  E_code(v[t-1]) + E_pos(p[t-1]) + E_step(t)   → h[t] → code v[t]
    Position-Transformer  input  h[t] + E_code(v[t])                          → position p[t]

Token ids: code c is id c; the start tokens follow the codes (unconditional: one id,
`codebook_size`; class-conditional: `codebook_size + label`, plus a null label for
classifier-free guidance when the model is trained with label dropout). The code head
predicts over the whole vocabulary, as the reference does, so converted weights give the
same losses; sampling only ever draws codes. Positions are cell indices 0..N-1 and N
is the start position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mvq.config import ConfigError, build_dataclass
from mvq.models.pretrained import PretrainedMixin
from mvq.nn.transformer import KVCache, TransformerStack

# Names of the reference release that our configs accept as well.
CONFIG_ALIASES = {
    "n_embd": "dim",
    "n_head": "heads",
    "value_layer": "code_layers",
    "position_layer": "position_layers",
    "n_classes": "num_classes",
    "loss_position_weight": "position_loss_weight",
    "kept": "num_tokens",
    "grid": "grid_size",
}


@dataclass
class StackformerConfig:
    """Architecture of a Stackformer. Layer/width defaults are the paper's (12 + 12 layers, 1024 wide)."""

    codebook_size: int
    grid_size: int
    num_tokens: int
    num_classes: int = 0
    code_layers: int = 12
    position_layers: int = 12
    dim: int = 1024
    heads: int = 16
    dropout: float = 0.1
    class_dropout: float = 0.0
    position_loss_weight: float = 1.0

    def __post_init__(self) -> None:
        for name in ("codebook_size", "grid_size", "num_tokens", "code_layers", "position_layers", "dim", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ConfigError(f"model.num_classes must be 0 (unconditional) or more, got {self.num_classes}")
        if self.num_tokens > self.num_cells:
            raise ConfigError(f"model.num_tokens ({self.num_tokens}) exceeds the {self.num_cells} cells of a "
                              f"{self.grid_size}×{self.grid_size} grid")
        if self.dim % self.heads:
            raise ConfigError(f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads})")
        for name in ("dropout", "class_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.class_dropout > 0 and self.num_classes == 0:
            raise ConfigError("model.class_dropout only applies to class-conditional models (num_classes > 0)")

    @property
    def num_cells(self) -> int:
        """N = H·W, the number of grid cells; also the id of the start position."""
        return self.grid_size ** 2

    @property
    def has_null_class(self) -> bool:
        """Whether there is an 'unconditional' label (needed for classifier-free guidance)."""
        return self.num_classes > 0 and self.class_dropout > 0

    @property
    def num_start_tokens(self) -> int:
        if self.num_classes == 0:
            return 1
        return self.num_classes + int(self.has_null_class)

    @property
    def vocab_size(self) -> int:
        """Codes followed by the start tokens."""
        return self.codebook_size + self.num_start_tokens

    @property
    def null_class_token(self) -> int:
        if not self.has_null_class:
            raise ValueError("this model has no unconditional label: it was configured without label dropout "
                             "(class_dropout = 0), so classifier-free guidance is not available")
        return self.codebook_size + self.num_classes

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "StackformerConfig":
        """Validate a `model:` section (our names, or the reference's names for the same things)."""
        renamed = {CONFIG_ALIASES.get(key, key): value for key, value in dict(mapping).items()}
        return build_dataclass(cls, renamed, "model")


@dataclass
class StackformerOutput:
    loss: torch.Tensor             # code_loss + position_loss_weight · position_loss
    code_loss: torch.Tensor        # mean cross-entropy of the codes
    position_loss: torch.Tensor    # mean cross-entropy of the positions
    code_logits: torch.Tensor      # B×T×vocab_size (codes first, then start tokens)
    position_logits: torch.Tensor  # B×T×(N+1) (cells, then the start position)


class Stackformer(nn.Module, PretrainedMixin):
    """Code-Transformer + Position-Transformer over (code, position) pairs in raster order."""

    model_type = "stackformer"
    config_class = StackformerConfig

    def __init__(self, config: StackformerConfig):
        super().__init__()
        self.config = c = config
        self.code_embedding = nn.Embedding(c.vocab_size, c.dim)
        self.position_embedding = nn.Embedding(c.num_cells + 1, c.dim)
        self.step_embedding = nn.Embedding(c.num_tokens, c.dim)
        self.input_dropout = nn.Dropout(c.dropout)
        self.code_transformer = TransformerStack(c.dim, c.heads, c.code_layers, c.dropout)
        self.position_transformer = TransformerStack(c.dim, c.heads, c.position_layers, c.dropout)
        self.code_norm = nn.LayerNorm(c.dim)
        self.code_head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.position_norm = nn.LayerNorm(c.dim)
        self.position_head = nn.Linear(c.dim, c.num_cells + 1, bias=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: weight decay on linear-layer weights only."""
        decayed = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        params = list(self.parameters())
        return [{"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
                {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]

    # ----------------------------------------------------------------------------- inputs

    def start_tokens(self, labels: torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
        """Start token of each sequence; in training, labels are dropped with probability `class_dropout`."""
        c = self.config
        if c.num_classes == 0:
            return torch.full((batch_size,), c.codebook_size, dtype=torch.long, device=device)
        tokens = labels.to(device=device, dtype=torch.long) + c.codebook_size
        if self.training and c.class_dropout > 0:
            dropped = torch.rand(batch_size, device=device) < c.class_dropout
            tokens = tokens.masked_fill(dropped, c.null_class_token)
        return tokens

    def _code_inputs(self, tokens: torch.Tensor, positions: torch.Tensor, first_step: int) -> torch.Tensor:
        """Code-Transformer input for the steps first_step, first_step+1, ...: token + position + step."""
        steps = self.step_embedding.weight[first_step:first_step + tokens.shape[1]]
        x = self.code_embedding(tokens) + self.position_embedding(positions) + steps
        return self.input_dropout(x)

    def _check_sequence(self, codes: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor | None) -> None:
        c = self.config
        if codes.dim() != 2 or codes.shape != positions.shape:
            raise ValueError(f"codes and positions must both be B×T, got {tuple(codes.shape)} and "
                             f"{tuple(positions.shape)}")
        if not 1 <= codes.shape[1] <= c.num_tokens:
            raise ValueError(f"sequence length {codes.shape[1]} is outside 1..{c.num_tokens} (num_tokens)")
        if c.num_classes and (labels is None or labels.shape != codes.shape[:1]):
            raise ValueError(f"this class-conditional model needs one label per sequence (shape "
                             f"({codes.shape[0]},)), got {None if labels is None else tuple(labels.shape)}")
        if not c.num_classes and labels is not None:
            raise ValueError("this model is unconditional (num_classes = 0); pass labels=None")

    # ----------------------------------------------------------------------------- training

    def forward(self, codes: torch.Tensor, positions: torch.Tensor,
                labels: torch.Tensor | None = None) -> StackformerOutput:
        """Teacher-forced losses and logits. codes/positions: B×T (T ≤ K), positions in raster order."""
        self._check_sequence(codes, positions, labels)
        c = self.config
        b = codes.shape[0]
        start = self.start_tokens(labels, b, codes.device)
        code_in = torch.cat([start[:, None], codes[:, :-1]], dim=1)
        position_in = torch.cat([positions.new_full((b, 1), c.num_cells), positions[:, :-1]], dim=1)

        hidden = self.code_transformer(self._code_inputs(code_in, position_in, 0))
        code_logits = self.code_head(self.code_norm(hidden))
        position_hidden = self.position_transformer(hidden + self.code_embedding(codes))
        position_logits = self.position_head(self.position_norm(position_hidden))

        code_loss = F.cross_entropy(code_logits.flatten(0, 1).float(), codes.flatten())
        position_loss = F.cross_entropy(position_logits.flatten(0, 1).float(), positions.flatten())
        loss = code_loss + c.position_loss_weight * position_loss
        return StackformerOutput(loss, code_loss, position_loss, code_logits, position_logits)

    # ----------------------------------------------------------------------------- sampling

    def incremental_decoder(self, start_tokens: torch.Tensor, use_cache: bool = True) -> "IncrementalDecoder":
        """Step-by-step access to both stacks (what `generate` uses); see `IncrementalDecoder`."""
        return IncrementalDecoder(self, start_tokens, use_cache)

    def _labels_tensor(self, labels: torch.Tensor | Sequence[int] | int | None, batch_size: int,
                       device: torch.device) -> torch.Tensor | None:
        c = self.config
        if c.num_classes == 0:
            if labels is not None:
                raise ValueError("this model is unconditional (num_classes = 0); pass labels=None")
            return None
        if labels is None:
            raise ValueError(f"this model is class-conditional ({c.num_classes} classes): pass one label per "
                             f"sample (labels=...)")
        labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise ValueError(f"got {labels.numel()} labels for a batch of {batch_size}")
        if bool(((labels < 0) | (labels >= c.num_classes)).any()):
            raise ValueError(f"labels must be in 0..{c.num_classes - 1}")
        return labels

    @torch.no_grad()
    def generate(self, batch_size: int, labels: torch.Tensor | Sequence[int] | int | None = None,
                 temperature: float = 1.0, top_k: int | None = 100, top_p: float | None = 0.95,
                 position_temperature: float = 1.0, position_top_k: int | None = 10,
                 position_top_p: float | None = 0.95, cfg_scale: float = 1.0, raster_constraint: bool = True,
                 use_cache: bool = True,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample `batch_size` sequences → (codes, positions), each B×K long.

        Per step: code logits → temperature → top-k → top-p → sample a code; then position
        logits → temperature → forbid the start position and used cells (with
        `raster_constraint`: cells ≤ the previous one and cells that leave too few for the
        remaining steps) → top-k → top-p → sample. `cfg_scale` ≠ 1 mixes conditional and
        unconditional logits (u + s·(c − u)) in both streams. `generator` may be one
        generator or one per sample; with one per sample, each sample's random draws come
        from its own generator only, so results do not depend on how samples are batched.
        """
        c = self.config
        device = self.code_embedding.weight.device
        if temperature <= 0 or position_temperature <= 0:
            raise ValueError("temperatures must be positive (use top_k=1 for greedy decoding)")
        for name, value in (("top_p", top_p), ("position_top_p", position_top_p)):
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1] (1 or None turns it off), got {value}")
        for name, value in (("top_k", top_k), ("position_top_k", position_top_k)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be positive (0 or None turns it off), got {value}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        labels = self._labels_tensor(labels, batch_size, device)
        guided = cfg_scale != 1.0
        if guided and c.num_classes == 0:
            raise ValueError("classifier-free guidance (cfg_scale != 1) needs a class-conditional model")
        uniforms = draw_uniforms(batch_size, c.num_tokens, generator).to(device)

        k, n = c.num_tokens, c.num_cells
        cells = torch.arange(n, device=device)
        codes = torch.empty(batch_size, k, dtype=torch.long, device=device)
        positions = torch.empty(batch_size, k, dtype=torch.long, device=device)
        previous = torch.full((batch_size, 1), -1, dtype=torch.long, device=device)
        used = torch.zeros(batch_size, n, dtype=torch.bool, device=device)

        def guide(logits: torch.Tensor) -> torch.Tensor:
            if logits.dtype not in (torch.float32, torch.float64):
                logits = logits.float()  # sample in at least fp32 when the model runs in half precision
            if not guided:
                return logits
            cond, uncond = logits.chunk(2)
            return uncond + cfg_scale * (cond - uncond)

        def both(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x]) if guided else x

        was_training = self.training
        self.eval()  # no dropout, no label dropout
        try:
            start = self.start_tokens(labels, batch_size, device)
            if guided:
                start = torch.cat([start, torch.full_like(start, c.null_class_token)])
            decoder = self.incremental_decoder(start, use_cache)
            for t in range(k):
                code_logits = guide(decoder.code_logits()[:, :c.codebook_size]) / temperature
                code = sample_from_logits(code_logits, top_k, top_p, uniforms[:, t, 0])

                position_logits = guide(decoder.position_logits(both(code))[:, :n]) / position_temperature
                if raster_constraint:  # ascending, and leave K-1-t cells after this one
                    forbidden = (cells <= previous) | (cells > n - k + t)
                else:
                    forbidden = used
                position_logits = position_logits.masked_fill(forbidden, float("-inf"))
                position = sample_from_logits(position_logits, position_top_k, position_top_p, uniforms[:, t, 1])
                decoder.append_position(both(position))

                codes[:, t], positions[:, t] = code, position
                previous = position[:, None]
                used = used.scatter(1, position[:, None], True)
        finally:
            self.train(was_training)
        return codes, positions


class IncrementalDecoder:
    """Runs the Code- and Position-Transformer one step at a time.

    Alternate `code_logits()` (logits for the next code), `position_logits(codes)` (logits
    for that code's position) and `append_position(positions)`. With `use_cache`, both
    stacks keep key/value caches and each step feeds one token per stack; without, every
    call recomputes the whole prefix (the reference's way; used to check the cache).
    """

    def __init__(self, model: Stackformer, start_tokens: torch.Tensor, use_cache: bool = True):
        c = model.config
        self.model, self.use_cache = model, use_cache
        b, k = start_tokens.shape[0], c.num_tokens
        device, dtype = start_tokens.device, model.code_embedding.weight.dtype
        self.step = 0
        self._hidden: torch.Tensor | None = None  # code-stack output of the current step
        # Inputs of the code stack at every step (start token / start position first).
        self._code_in = torch.empty(b, k, dtype=torch.long, device=device)
        self._position_in = torch.empty(b, k, dtype=torch.long, device=device)
        self._code_in[:, 0] = start_tokens
        self._position_in[:, 0] = c.num_cells
        self._codes = torch.empty(b, k, dtype=torch.long, device=device)
        self._code_cache: KVCache | None = None
        self._position_cache: KVCache | None = None
        if use_cache:
            self._code_cache = model.code_transformer.new_cache(b, k, device, dtype)
            self._position_cache = model.position_transformer.new_cache(b, k, device, dtype)

    def code_logits(self) -> torch.Tensor:
        """B×vocab_size logits of the code at the current step."""
        m, t = self.model, self.step
        if t >= m.config.num_tokens:
            raise ValueError(f"all {m.config.num_tokens} steps are decoded")
        if self.use_cache:
            x = m._code_inputs(self._code_in[:, t:t + 1], self._position_in[:, t:t + 1], t)
            hidden = m.code_transformer(x, self._code_cache)
        else:
            x = m._code_inputs(self._code_in[:, :t + 1], self._position_in[:, :t + 1], 0)
            hidden = m.code_transformer(x)
        self._hidden = hidden
        return m.code_head(m.code_norm(hidden[:, -1]))

    def position_logits(self, codes: torch.Tensor) -> torch.Tensor:
        """B×(N+1) logits of the position of `codes` (B), the codes chosen at the current step."""
        m, t = self.model, self.step
        if self._hidden is None:
            raise ValueError("call code_logits() before position_logits() at each step")
        self._codes[:, t] = codes
        if self.use_cache:
            hidden = m.position_transformer(self._hidden + m.code_embedding(self._codes[:, t:t + 1]),
                                            self._position_cache)
        else:
            hidden = m.position_transformer(self._hidden + m.code_embedding(self._codes[:, :t + 1]))
        return m.position_head(m.position_norm(hidden[:, -1]))

    def append_position(self, positions: torch.Tensor) -> None:
        """Fix the current step's positions (B) and move to the next step."""
        t = self.step
        if t + 1 < self.model.config.num_tokens:
            self._code_in[:, t + 1] = self._codes[:, t]
            self._position_in[:, t + 1] = positions
        self._hidden = None
        self.step = t + 1


def draw_uniforms(batch_size: int, steps: int, generator: torch.Generator | Sequence[torch.Generator] | None,
                  ) -> torch.Tensor:
    """B×steps×2 uniforms in [0, 1): one for the code and one for the position of each step.

    With a list of generators, sample i draws only from generator i (batching-independent).
    """
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else "cpu"
        return torch.rand(batch_size, steps, 2, generator=generator, device=device)
    generators = list(generator)
    if len(generators) != batch_size:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch_size}")
    return torch.stack([torch.rand(steps, 2, generator=g, device=g.device).cpu() for g in generators])


def filter_probabilities(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Probabilities (unnormalised after top-p) restricted to the top-k, then to the top-p nucleus."""
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth_largest = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probs = logits.softmax(dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        outside = (mass_before >= top_p).scatter(-1, order, mass_before >= top_p)
        probs = probs.masked_fill(outside, 0.0)
    return probs


def sample_from_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None,
                       uniforms: torch.Tensor) -> torch.Tensor:
    """One index per row by inverse-CDF sampling with the given uniforms (B), after top-k/top-p."""
    probs = filter_probabilities(logits, top_k, top_p)
    cdf = probs.cumsum(dim=-1)
    targets = uniforms[:, None].to(cdf.dtype) * cdf[:, -1:]
    index = torch.searchsorted(cdf, targets, right=True).squeeze(1)
    # Guard against u·total rounding up to total: never step past the last allowed entry.
    last_allowed = torch.where(probs > 0, torch.arange(probs.shape[-1], device=probs.device), 0).amax(dim=-1)
    return torch.minimum(index, last_allowed)
