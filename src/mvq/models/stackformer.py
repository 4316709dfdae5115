"""Stackformer: autoregressive model over the MQ-VAE's K (code, position) pairs (docs/method.md §6).

The sequence is the kept pairs in raster order, preceded by a start token (the class, or
one start-of-sequence token) at the start position N. At step t:

    Code-Transformer      input  E_code(v[t-1]) + E_pos(p[t-1]) + E_step(t)   → h[t] → code v[t]
    Position-Transformer  input  h[t] + E_code(v[t])                          → position p[t]

Token ids: code c is id c; the start tokens follow the codes (unconditional: one id,
`codebook_size`; class-conditional: `codebook_size + label`, plus a null label for
classifier-free guidance when the model is trained with label dropout). The code head
predicts over the whole vocabulary, as the reference does, so converted weights give the
same losses; sampling only ever draws codes. Positions are cell indices 0..N-1 and N
is the start position. The sampling loop and the KV-cached step-by-step decoder live in
`mvq.models.sampling`; `Stackformer.generate` is its entry point.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mvq.config import ConfigError, build_dataclass
from mvq.models.hub import push_folder
from mvq.models.pretrained import PretrainedMixin, tokenizer_record_of, write_tokenizer_record
from mvq.models.sampling import IncrementalDecoder, SamplingConfig, generate
from mvq.nn.transformer import TransformerStack

IGNORED = -100  # a target that is not scored (after a variable-length row's end)


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
    # What each class is called (from the training data: folder names, a dataset's labels); shown by the app,
    # the demo report and messages. Not part of the architecture.
    class_names: tuple[str, ...] | None = None
    # The order of the tokens it learnt (its token store's): "raster" (positions ascending, the paper's)
    # or "rank" (most important first: generation may stop after any number of tokens).
    token_order: str = "raster"
    # Learnt from a store with a budget per image (rows of up to num_tokens tokens, then -1): the code head
    # has one more output, "end of image", and sampling stops each image where the model ends it.
    variable_length: bool = False

    def __post_init__(self) -> None:
        if self.token_order not in ("raster", "rank"):
            raise ConfigError(f"model.token_order must be raster or rank, got {self.token_order!r}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ConfigError(f"model.class_names has {len(self.class_names)} names for {self.num_classes} classes")
        for name in ("codebook_size", "grid_size", "num_tokens", "code_layers", "dim", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if self.position_layers < 0:
            raise ConfigError(f"model.position_layers must be 0 or more, got {self.position_layers}")
        if self.position_layers == 0 and self.num_tokens != self.num_cells:
            raise ConfigError(f"model.position_layers: 0 (no Position-Transformer) needs a token at every cell "
                              f"(num_tokens = {self.num_cells}, a VQGAN's tokens), got num_tokens {self.num_tokens}")
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

    def class_label(self, index: int) -> str:
        """"3 (cross)", or "3" when the model has no class names: how a class is shown."""
        return f"{index} ({self.class_names[index]})" if self.class_names else str(index)

    @property
    def num_cells(self) -> int:
        """N = H·W, the number of grid cells; also the id of the start position."""
        return self.grid_size ** 2

    @property
    def has_position_transformer(self) -> bool:
        """Without one (position_layers 0, every cell a token) the positions are the raster order: a plain GPT."""
        return self.position_layers > 0

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
    def end_code(self) -> int:
        """The code head's "end of image" output (a variable-length model's): after the codes and start tokens."""
        if not self.variable_length:
            raise ValueError("this model has no end-of-image output: it learnt a fixed number of tokens per image")
        return self.vocab_size

    @property
    def null_class_token(self) -> int:
        if not self.has_null_class:
            raise ValueError("this model has no unconditional label: it was configured without label dropout "
                             "(class_dropout = 0), so classifier-free guidance is not available")
        return self.codebook_size + self.num_classes

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "StackformerConfig":
        """Validate a `model:` section in mvq's names (`mvq.convert` renames the reference's)."""
        return build_dataclass(cls, mapping, "model")


@dataclass
class StackformerOutput:
    loss: torch.Tensor             # code_loss + position_loss_weight · position_loss
    code_loss: torch.Tensor        # mean cross-entropy of the codes
    position_loss: torch.Tensor    # mean cross-entropy of the positions
    code_logits: torch.Tensor      # B×T×vocab_size (codes first, then start tokens)
    position_logits: torch.Tensor | None  # B×T×(N+1) (cells, then the start position); None: no Position-Transformer


class Stackformer(nn.Module, PretrainedMixin):
    """Code-Transformer + Position-Transformer over (code, position) pairs in raster order."""

    model_type = "stackformer"
    config_class = StackformerConfig

    def save_pretrained(self, directory: str | os.PathLike, push_to_hub: bool = False, repo_id: str | None = None,
                        tokenizer: nn.Module | None = None) -> Path:
        """Write config.json and model.safetensors and, given the MQ-VAE or VQGAN whose tokens this model
        learnt, tokenizer.json: sampling checks the tokenizer it is paired with against that record."""
        directory = super().save_pretrained(directory)
        if tokenizer is not None:
            write_tokenizer_record(directory, tokenizer_record_of(tokenizer))
        if push_to_hub:
            push_folder(directory, repo_id or Path(directory).name)
        return directory

    def __init__(self, config: StackformerConfig):
        super().__init__()
        self.config = c = config
        self.code_embedding = nn.Embedding(c.vocab_size, c.dim)
        self.position_embedding = nn.Embedding(c.num_cells + 1, c.dim)
        self.step_embedding = nn.Embedding(c.num_tokens, c.dim)
        self.input_dropout = nn.Dropout(c.dropout)
        self.code_transformer = TransformerStack(c.dim, c.heads, c.code_layers, c.dropout)
        # Without a Position-Transformer (position_layers 0) the positions are the raster order: nothing predicts them.
        predicts = c.has_position_transformer
        self.position_transformer = TransformerStack(c.dim, c.heads, c.position_layers, c.dropout) if predicts else None
        self.code_norm = nn.LayerNorm(c.dim)
        self.code_head = nn.Linear(c.dim, c.vocab_size + int(c.variable_length), bias=False)
        self.position_norm = nn.LayerNorm(c.dim) if predicts else None
        self.position_head = nn.Linear(c.dim, c.num_cells + 1, bias=False) if predicts else None
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

    def code_inputs(self, tokens: torch.Tensor, positions: torch.Tensor, first_step: int) -> torch.Tensor:
        """Code-Transformer input for the steps first_step, first_step+1, ...: token + position + step.

        The training forward pass and the step-by-step decoder (`mvq.models.sampling`) both build it here.
        """
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

    def targets(self, codes: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(code targets, position targets, codes, positions as inputs). A variable-length model's rows end
        in -1: the first -1 is the "end of image" code target, later ones are not scored, and the inputs
        there get stand-ins (causal attention keeps them from the scored steps)."""
        if not self.config.variable_length:
            return codes, positions, codes, positions
        c = self.config
        padding = codes < 0
        first_padding = padding & ~F.pad(padding[:, :-1], (1, 0))
        code_target = codes.masked_fill(padding, IGNORED).masked_fill(first_padding, c.end_code)
        return (code_target, positions.masked_fill(padding, IGNORED), codes.clamp(min=0),
                positions.masked_fill(padding, c.num_cells))

    def forward(self, codes: torch.Tensor, positions: torch.Tensor,
                labels: torch.Tensor | None = None) -> StackformerOutput:
        """Teacher-forced losses and logits. codes/positions: B×T (T ≤ K), positions in raster order.

        Without a Position-Transformer, positions must be 0, 1, ..., T-1 (not checked: that would
        cost a host sync per step); the position loss is then 0 and `position_logits` None.
        """
        self._check_sequence(codes, positions, labels)
        c = self.config
        b = codes.shape[0]
        code_target, position_target, codes, positions = self.targets(codes, positions)
        start = self.start_tokens(labels, b, codes.device)
        code_in = torch.cat([start[:, None], codes[:, :-1]], dim=1)
        position_in = torch.cat([positions.new_full((b, 1), c.num_cells), positions[:, :-1]], dim=1)

        hidden = self.code_transformer(self.code_inputs(code_in, position_in, 0))
        code_logits = self.code_head(self.code_norm(hidden))
        code_loss = F.cross_entropy(code_logits.flatten(0, 1).float(), code_target.flatten(), ignore_index=IGNORED)
        if self.position_transformer is None:
            return StackformerOutput(code_loss, code_loss, code_loss.new_zeros(()), code_logits, None)
        position_hidden = self.position_transformer(hidden + self.code_embedding(codes))
        position_logits = self.position_head(self.position_norm(position_hidden))

        position_loss = F.cross_entropy(position_logits.flatten(0, 1).float(), position_target.flatten(),
                                        ignore_index=IGNORED)
        loss = code_loss + c.position_loss_weight * position_loss
        return StackformerOutput(loss, code_loss, position_loss, code_logits, position_logits)

    @torch.no_grad()
    def log_likelihood(self, codes: torch.Tensor, positions: torch.Tensor,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
        """log p(tokens | label) of each sequence (B): the model's own judgement of how likely an image's
        tokens are under a class, which makes a class-conditional Stackformer a classifier too."""
        out = self(codes, positions, labels)
        code_target, position_target, _, _ = self.targets(codes, positions)
        total = -F.cross_entropy(out.code_logits.transpose(1, 2).float(), code_target, reduction="none",
                                 ignore_index=IGNORED).sum(1)
        if out.position_logits is not None:
            total -= self.config.position_loss_weight * F.cross_entropy(
                out.position_logits.transpose(1, 2).float(), position_target, reduction="none",
                ignore_index=IGNORED).sum(1)
        return total

    # ----------------------------------------------------------------------------- sampling

    def incremental_decoder(self, start_tokens: torch.Tensor, use_cache: bool = True) -> "IncrementalDecoder":
        """Step-by-step access to both stacks (what `generate` uses); see `mvq.models.sampling`."""
        return IncrementalDecoder(self, start_tokens, use_cache)

    def generate(self, batch_size: int, labels: torch.Tensor | Sequence[int] | int | None = None,
                 sampling: SamplingConfig | None = None,
                 generator: torch.Generator | Sequence[torch.Generator] | None = None,
                 prefix_codes: torch.Tensor | None = None, prefix_positions: torch.Tensor | None = None,
                 **settings: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample `batch_size` sequences → (codes, positions), each B×K long, or B×`num_tokens` (a setting; see
        `mvq.models.sampling`).

        Settings come as a `SamplingConfig` and/or as its fields by name (`temperature=0.8`),
        which override it. With one generator per sample, results do not depend on the batching.
        """
        sampling = (sampling or SamplingConfig()).replace(**settings) if settings else sampling
        return generate(self, batch_size, labels, sampling, generator, prefix_codes, prefix_positions)
