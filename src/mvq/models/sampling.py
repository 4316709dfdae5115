"""Sampling from a Stackformer: the settings, the per-step loop and the incremental decoder.

This is where a token is sampled: `sample_from_logits`, called from `generate` once for the
code and once for the position of every step. Each step draws a code, then that code's
position (docs/method.md §7):

    code logits     → temperature → top-k → top-p → draw a code
    position logits → temperature → forbid the start position and used cells (raster order:
                      cells ≤ the previous one, and cells that leave too few for the remaining
                      steps) → top-k → top-p → draw a position

Why inverse-CDF over pre-drawn uniforms: every sample's two uniforms per step are drawn
up front from that sample's own generator, and a token is the first index whose cumulative
probability exceeds its uniform. No random call ever depends on the batch size or on the
other samples of the batch, so a seed gives the same images whatever the batch size (and on
several ranks), which `torch.multinomial` over a batch cannot promise.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

from mvq.errors import UserError
from mvq.models.labels import labels_tensor
from mvq.nn.transformer import KVCache

if TYPE_CHECKING:
    from mvq.models.stackformer import Stackformer

Generators = torch.Generator | Sequence[torch.Generator] | None


class SamplingError(UserError, ValueError):
    """Sampling settings or inputs that cannot be used."""


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn. Defaults are the paper's (top-k 100 / top-p 0.95 for codes, 10 / 0.95 for positions).

    A top-k of 0 or None and a top-p of 1 or None turn that filter off; `cfg_scale` ≠ 1 mixes
    conditional and unconditional logits (u + s·(c − u)) in both streams; `use_cache=False`
    recomputes the whole prefix every step (same results, slower; for checking the cache);
    `num_tokens` stops after that many tokens (≤ the model's K; see `generate`).
    """

    temperature: float = 1.0
    top_k: int | None = 100
    top_p: float | None = 0.95
    position_temperature: float = 1.0
    position_top_k: int | None = 10
    position_top_p: float | None = 0.95
    cfg_scale: float = 1.0
    raster_constraint: bool = True
    use_cache: bool = True
    num_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.num_tokens is not None and (isinstance(self.num_tokens, bool) or int(self.num_tokens) != self.num_tokens
                                            or self.num_tokens < 1):
            raise SamplingError(f"num_tokens must be a whole number ≥ 1 (None: the model's K), got {self.num_tokens}")
        for name in ("temperature", "position_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise SamplingError(f"{name} must be a positive finite number, got {value} "
                                    "(use top_k=1 for greedy decoding)")
        for name in ("top_p", "position_top_p"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 < value <= 1):
                raise SamplingError(f"{name} must be a finite number in (0, 1] (1 or None turns it off), got {value}")
        for name in ("top_k", "position_top_k"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
                raise SamplingError(f"{name} must be a whole number ≥ 0 (0 or None turns it off), got {value}")
        if not math.isfinite(self.cfg_scale):
            raise SamplingError(f"cfg_scale must be a finite number (1 = no guidance), got {self.cfg_scale}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def replace(self, **changes: Any) -> "SamplingConfig":
        """A copy with some settings changed (validated again); unknown names are an error."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown sampling settings {unknown}; valid: "
                            f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)


@torch.no_grad()
def generate(model: "Stackformer", batch_size: int, labels: torch.Tensor | Sequence[int] | int | None = None,
             sampling: SamplingConfig | None = None, generator: Generators = None,
             prefix_codes: torch.Tensor | None = None, prefix_positions: torch.Tensor | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `batch_size` sequences → (codes, positions), each B×K long, or B×`sampling.num_tokens` (≤ K).

    A variable-length model (`variable_length`) ends each image where it draws its end-of-image
    output: that row's remaining entries are -1 (as a store with a budget per image holds them), and
    sampling stops once every image has ended. With `num_tokens` it gives exactly that many instead.

    Stopping early keeps every draw of the steps taken, so the first k tokens are the same whatever
    `num_tokens` is; for a model trained in rank order (`token_order: rank`) they are a whole image at
    budget k, for a raster-order model only its first rows. The raster constraint applies to
    raster-order models only.

    `generator` may be one generator or one per sample (then results do not depend on the
    batching). `prefix_codes` / `prefix_positions` (B×P, or P for all samples) are forced as
    the first P steps — image completion — and the rest is sampled after them.
    """
    c = model.config
    sampling = sampling or SamplingConfig()
    device = model.code_embedding.weight.device
    if batch_size < 1:
        raise SamplingError(f"batch_size must be at least 1, got {batch_size}")
    labels = labels_tensor(labels, c.num_classes, batch_size, device)
    if sampling.guided and not c.has_null_class:
        raise SamplingError("classifier-free guidance (cfg_scale != 1) needs a class-conditional model trained "
                            "with label dropout (model.class_dropout > 0)")
    raster = sampling.raster_constraint and c.token_order == "raster"
    steps = c.num_tokens if sampling.num_tokens is None else int(sampling.num_tokens)
    if not 1 <= steps <= c.num_tokens:
        raise SamplingError(f"num_tokens must be in 1..{c.num_tokens} (the model's K), got {sampling.num_tokens}")
    if steps < c.num_tokens and not c.has_position_transformer:
        raise SamplingError("num_tokens below K needs a Stackformer with a Position-Transformer: this model's "
                            "tokenizer (a VQGAN) decodes only whole grids")
    prefix = _check_prefix(prefix_codes, prefix_positions, model, batch_size, raster, device)
    if prefix is not None and prefix[0].shape[1] > steps:
        raise SamplingError(f"a prefix of {prefix[0].shape[1]} steps is longer than num_tokens ({steps})")
    uniforms = draw_uniforms(batch_size, c.num_tokens, generator).to(device)

    k, n = c.num_tokens, c.num_cells
    variable = c.variable_length
    # A variable-length model may end an image (not at step 0, nor when num_tokens asks for a count).
    may_end = variable and sampling.num_tokens is None
    cells = torch.arange(n, device=device)
    codes = torch.full((batch_size, steps), -1, dtype=torch.long, device=device)
    positions = torch.full((batch_size, steps), -1, dtype=torch.long, device=device)
    ended = torch.zeros(batch_size, dtype=torch.bool, device=device)
    used = torch.zeros(batch_size, n, dtype=torch.bool, device=device)
    previous = torch.full((batch_size, 1), -1, dtype=torch.long, device=device)

    def guide(logits: torch.Tensor) -> torch.Tensor:
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()  # sample in at least fp32 when the model runs in half precision
        if not sampling.guided:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + sampling.cfg_scale * (cond - uncond)

    def both(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x]) if sampling.guided else x

    was_training = model.training
    model.eval()  # no dropout, no label dropout
    try:
        start = model.start_tokens(labels, batch_size, device)
        if sampling.guided:
            start = torch.cat([start, torch.full_like(start, c.null_class_token)])
        decoder = IncrementalDecoder(model, start, sampling.use_cache)
        first = 0
        if prefix is not None:
            forced_codes, forced_positions = prefix
            first = forced_codes.shape[1]
            decoder.force(both(forced_codes), both(forced_positions))
            codes[:, :first], positions[:, :first] = forced_codes, forced_positions
            if not raster:
                used = used.scatter(1, forced_positions, True)
            previous = forced_positions[:, -1:]

        def draw_code(t: int) -> torch.Tensor:
            logits = decoder.code_logits()
            code_logits = logits[:, :c.codebook_size]
            if variable:  # the end-of-image output joins the codes as index codebook_size
                code_logits = torch.cat([code_logits, logits[:, c.end_code:c.end_code + 1]], dim=1)
            code_logits = guide(code_logits) / sampling.temperature
            if variable:
                end = code_logits[:, -1:]
                if not may_end or t == 0:
                    end = torch.full_like(end, float("-inf"))
                if raster and may_end:  # no cell left after the previous one: the image must end here
                    code_logits = code_logits.masked_fill(previous >= n - 1, float("-inf"))
                code_logits = torch.cat([code_logits[:, :-1], end], dim=1)
            return sample_from_logits(code_logits, sampling.top_k, sampling.top_p, uniforms[:, t, 0])

        def draw_position(code: torch.Tensor, t: int) -> torch.Tensor:
            position_logits = guide(decoder.position_logits(both(code))[:, :n]) / sampling.position_temperature
            if raster and may_end:  # ascending; the image may end at any cell
                forbidden = cells <= previous
            elif raster:  # ascending, and leave K-1-t cells after this one
                forbidden = (cells <= previous) | (cells > n - k + t)
            else:
                forbidden = used
            forbidden = forbidden & ~ended[:, None]  # an ended image's draws are discarded: any cell will do
            position_logits = position_logits.masked_fill(forbidden, float("-inf"))
            return sample_from_logits(position_logits, sampling.position_top_k, sampling.position_top_p,
                                      uniforms[:, t, 1])

        for t in range(first, steps):
            code = draw_code(t)
            if variable:
                ended = ended | (code == c.codebook_size)
                code = code.masked_fill(ended, 0)  # a stand-in the decoder can embed; -1 in the result
            if c.has_position_transformer:
                position = draw_position(code, t)
            else:  # no Position-Transformer: every cell is a token and the positions are the raster order
                decoder.fix_codes(both(code))
                position = cells[t].expand(batch_size)
            decoder.append_position(both(position))

            codes[:, t], positions[:, t] = code.masked_fill(ended, -1), position.masked_fill(ended, -1)
            previous = torch.where(ended[:, None], previous, position[:, None])
            if not raster:  # the raster constraint alone already forbids used cells
                used = used.scatter(1, position[:, None], True)
            if may_end and bool(ended.all()):  # every image has ended (one host sync per step, only here)
                break
    finally:
        model.train(was_training)
    return codes, positions


def _check_prefix(prefix_codes: torch.Tensor | None, prefix_positions: torch.Tensor | None, model: "Stackformer",
                  batch_size: int, raster: bool, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Validated B×P prefix (codes, positions) on `device`, or None without one."""
    if prefix_codes is None and prefix_positions is None:
        return None
    if prefix_codes is None or prefix_positions is None:
        raise SamplingError("pass both prefix_codes and prefix_positions (or neither)")
    c = model.config
    codes = torch.as_tensor(prefix_codes, dtype=torch.long, device=device)
    positions = torch.as_tensor(prefix_positions, dtype=torch.long, device=device)
    if codes.dim() == 1:
        codes, positions = codes.expand(batch_size, -1), positions.expand(batch_size, -1)
    if codes.dim() != 2 or codes.shape != positions.shape or codes.shape[0] != batch_size:
        raise SamplingError(f"the prefix must be P or {batch_size}×P codes and positions of the same shape, got "
                            f"{tuple(codes.shape)} and {tuple(positions.shape)}")
    p = codes.shape[1]
    if not 1 <= p <= c.num_tokens:
        raise SamplingError(f"a prefix holds 1..{c.num_tokens} (num_tokens) steps, got {p}")
    if bool(((codes < 0) | (codes >= c.codebook_size)).any()):
        raise SamplingError(f"prefix codes must be in 0..{c.codebook_size - 1}")
    if bool(((positions < 0) | (positions >= c.num_cells)).any()):
        raise SamplingError(f"prefix positions must be cells 0..{c.num_cells - 1}")
    if not c.has_position_transformer:
        if not torch.equal(positions, torch.arange(p, device=device).expand_as(positions)):
            raise SamplingError(f"this model has no Position-Transformer: prefix positions must be 0..{p - 1} "
                                f"(raster order)")
    elif raster:
        if p > 1 and bool((positions[:, 1:] <= positions[:, :-1]).any()):
            raise SamplingError("prefix positions must be strictly ascending (raster order)")
        if bool((positions[:, -1] > c.num_cells - c.num_tokens + p - 1).any()):
            raise SamplingError(f"the prefix's last position leaves too few cells for the remaining "
                                f"{c.num_tokens - p} steps")
    elif bool((positions.sort(dim=1).values[:, 1:] == positions.sort(dim=1).values[:, :-1]).any()):
        raise SamplingError("prefix positions must not repeat")
    return codes, positions


class IncrementalDecoder:
    """Runs the Code- and Position-Transformer one step at a time.

    Alternate `code_logits()` (logits for the next code), `position_logits(codes)` (logits
    for that code's position) and `append_position(positions)`; `force(codes, positions)`
    feeds known first steps in one pass. With `use_cache`, both stacks keep key/value caches
    and each step feeds one token per stack; without, every call recomputes the whole prefix
    (the reference's way; used to check the cache).
    """

    def __init__(self, model: "Stackformer", start_tokens: torch.Tensor, use_cache: bool = True):
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
            if model.position_transformer is not None:
                self._position_cache = model.position_transformer.new_cache(b, k, device, dtype)

    def code_logits(self) -> torch.Tensor:
        """B×vocab_size logits of the code at the current step."""
        m, t = self.model, self.step
        if t >= m.config.num_tokens:
            raise ValueError(f"all {m.config.num_tokens} steps are decoded")
        if self.use_cache:
            x = m.code_inputs(self._code_in[:, t:t + 1], self._position_in[:, t:t + 1], t)
            hidden = m.code_transformer(x, self._code_cache)
        else:
            x = m.code_inputs(self._code_in[:, :t + 1], self._position_in[:, :t + 1], 0)
            hidden = m.code_transformer(x)
        self._hidden = hidden
        return m.code_head(m.code_norm(hidden[:, -1]))

    def fix_codes(self, codes: torch.Tensor) -> None:
        """Fix the codes (B) chosen at the current step (`position_logits` does it too)."""
        if self._hidden is None:
            raise ValueError("call code_logits() before fixing the codes of a step")
        self._codes[:, self.step] = codes

    def position_logits(self, codes: torch.Tensor) -> torch.Tensor:
        """B×(N+1) logits of the position of `codes` (B), the codes chosen at the current step."""
        m, t = self.model, self.step
        if m.position_transformer is None:
            raise ValueError("this model has no Position-Transformer: its positions are the raster order")
        self.fix_codes(codes)
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

    def force(self, codes: torch.Tensor, positions: torch.Tensor) -> None:
        """Take B×P known (code, position) steps as decoded, filling both caches in one pass."""
        m, t, p = self.model, self.step, codes.shape[1]
        if t != 0 or self._hidden is not None:
            raise ValueError("force() feeds the first steps: call it before decoding")
        self._codes[:, :p] = codes
        end = min(p + 1, m.config.num_tokens)
        self._code_in[:, 1:end] = codes[:, :end - 1]
        self._position_in[:, 1:end] = positions[:, :end - 1]
        if self.use_cache:  # without caches every later call recomputes from these inputs
            hidden = m.code_transformer(m.code_inputs(self._code_in[:, :p], self._position_in[:, :p], 0),
                                        self._code_cache)
            if m.position_transformer is not None:
                m.position_transformer(hidden + m.code_embedding(codes), self._position_cache)
        self.step = p


def draw_uniforms(batch_size: int, steps: int, generator: Generators) -> torch.Tensor:
    """B×steps×2 uniforms in [0, 1): one for the code and one for the position of each step.

    With a list of generators, sample i draws only from generator i (batching-independent).
    """
    if generator is None or isinstance(generator, torch.Generator):
        device = generator.device if generator is not None else "cpu"
        return torch.rand(batch_size, steps, 2, generator=generator, device=device)
    generators = list(generator)
    if len(generators) != batch_size:
        raise SamplingError(f"got {len(generators)} generators for a batch of {batch_size}")
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
        outside_sorted = mass_before >= top_p  # in descending-probability order: put back in vocabulary order
        outside = torch.zeros_like(outside_sorted).scatter(-1, order, outside_sorted)
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
