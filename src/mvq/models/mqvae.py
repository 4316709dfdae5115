"""MQ-VAE: encoder → adaptive mask → EMA quantizer → adaptive de-mask → decoder.

An image becomes K (code, position) pairs instead of H×W codes (docs/method.md §1–4).
The config uses mvq's names only; `mvq.convert` translates the reference release's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch

from mvq.config import ConfigError, build_dataclass
from mvq.errors import InvalidInputError
from mvq.models.tokenizer_base import Tokenizer, TokenizerConfig
from mvq.nn import (DEMASK_ATTENTIONS, MASK_CHOICES, MASK_UPDATES, AdaptiveDemasker, Decoder, EMAVectorQuantizer,
                    build_masker)


# How an any-K run draws keep counts (`MQVAEConfig.train_keep_schedule`), and for what: one count per
# training batch, or one per image of it (`MQVAEConfig.train_keep_per`).
KEEP_SCHEDULES = ("uniform", "pow2")
KEEP_DRAWS = ("batch", "image")
# How tokens are listed: by position (the paper's raster order) or by importance, best first.
TOKEN_ORDERS = ("raster", "rank")


@dataclass
class MQVAEConfig(TokenizerConfig):
    """Architecture of an MQ-VAE. Defaults are the paper's ImageNet model (f8, keep 25%).

    The encoder/decoder fields come from `TokenizerConfig`; these follow them.
    """

    POSITIVE_FIELDS = (*TokenizerConfig.POSITIVE_FIELDS, "demask_layers")
    DISPLAY_NAME: ClassVar[str] = "MQ-VAE"

    keep_ratio: float = 0.25
    codebook_size: int = 1024
    codebook_dim: int = 256
    demask_layers: int = 8
    mask_init_value: float = 0.02
    commitment_beta: float = 0.25
    ema_decay: float = 0.99
    restart_unused_codes: bool = True
    # Ablations (docs/method.md §8); the defaults are the paper's method.
    mask_choice: str = "adaptive"                   # "adaptive" (score network) | "random" (random ranking, same K)
    demask_attention: str = "direction_constrained"  # | "plain": ordinary attention, every key weight 1
    mask_update: str = "sqrt"                       # masked keys' weight m ← √m per block | "constant"
    # Any-K training (None: every step keeps K cells, the paper's fixed budget). Each training batch
    # keeps a K drawn from [train_keep_min · N, K] by `train_keep_schedule`; with `train_full_keep_pass`
    # the step also reconstructs at the full K and adds that loss.
    train_keep_min: float | None = None
    train_keep_schedule: str = "uniform"            # every count equally likely | "pow2": K_min·2^i and K
    train_keep_per: str = "batch"                   # one count per batch | "image": one per image (cells
                                                    # beyond an image's count still pass the quantizer)
    train_full_keep_pass: bool = False

    def __post_init__(self) -> None:
        for name, choices in (("mask_choice", MASK_CHOICES), ("demask_attention", DEMASK_ATTENTIONS),
                              ("mask_update", MASK_UPDATES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"model.{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        if self.demask_attention == "plain" and self.mask_update != "sqrt":
            raise ConfigError("model.mask_update only applies to direction_constrained de-mask attention; "
                              "remove it or set model.demask_attention: direction_constrained")
        self.check_common_fields()
        if not 0.0 < self.mask_init_value <= 1.0:
            raise ConfigError(f"model.mask_init_value must be in (0, 1], got {self.mask_init_value}")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ConfigError(f"model.keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.z_channels != self.ch * self.ch_mult[-1]:
            raise ConfigError(f"model.z_channels ({self.z_channels}) must equal ch * ch_mult[-1] "
                              f"({self.ch * self.ch_mult[-1]}): the decoder has no conv_in of its own")
        if self.num_tokens < 1:
            raise ConfigError(f"model.keep_ratio {self.keep_ratio} keeps no cell of the {self.num_cells}-cell grid")
        if self.train_keep_schedule not in KEEP_SCHEDULES:
            raise ConfigError(f"model.train_keep_schedule must be one of {', '.join(KEEP_SCHEDULES)}; got "
                              f"{self.train_keep_schedule!r}")
        if self.train_keep_per not in KEEP_DRAWS:
            raise ConfigError(f"model.train_keep_per must be one of {', '.join(KEEP_DRAWS)}; got "
                              f"{self.train_keep_per!r}")
        if self.train_keep_min is not None and not (0 < self.train_keep_min <= self.keep_ratio
                                                    and int(self.train_keep_min * self.num_cells) >= 1):
            raise ConfigError(f"model.train_keep_min must keep at least one cell and at most keep_ratio "
                              f"({self.keep_ratio}); got {self.train_keep_min}")

    @property
    def any_k(self) -> bool:
        """Trained to keep any number of cells up to K (its tokens at a smaller K are a prefix)."""
        return self.train_keep_min is not None

    def keep_count(self, keep: int | float | torch.Tensor | None) -> int | torch.Tensor:
        """A budget as a cell count: None → K; a float in (0, 1] → that share of the N cells; an int → itself;
        a 1-D integer tensor → one count per image (checked)."""
        if keep is None:
            return self.num_tokens
        if isinstance(keep, torch.Tensor):
            if keep.dim() != 1 or keep.dtype.is_floating_point or keep.dtype == torch.bool:
                raise InvalidInputError(f"per-image keep counts must be a 1-D integer tensor, got {keep.dtype} of "
                                        f"shape {tuple(keep.shape)}")
            if bool(((keep < 1) | (keep > self.num_cells)).any()):
                raise InvalidInputError(f"per-image keep counts must be in 1..{self.num_cells}, got "
                                        f"{int(keep.min())}..{int(keep.max())}")
            return keep
        if isinstance(keep, float):
            if not 0 < keep <= 1 or int(keep * self.num_cells) < 1:
                raise InvalidInputError(f"a keep ratio must be in (0, 1] and keep a cell of the {self.num_cells}, "
                                        f"got {keep}")
            return int(keep * self.num_cells)
        if isinstance(keep, bool) or int(keep) != keep or not 1 <= keep <= self.num_cells:
            raise InvalidInputError(f"keep must be a count in 1..{self.num_cells} or a ratio in (0, 1], got {keep!r}")
        return int(keep)

    def draw_train_keep(self, batch_size: int = 1) -> int | torch.Tensor:
        """The keep count of one any-K training batch (`train_keep_per: image`: a tensor of `batch_size`
        counts, one per image), from torch's global generator (restored on resume)."""
        low, high = max(1, int(self.train_keep_min * self.num_cells)), self.num_tokens
        shape = (batch_size,) if self.train_keep_per == "image" else ()
        if self.train_keep_schedule == "pow2":
            choices = torch.tensor(sorted({min(low * 2 ** i, high) for i in range((high // low).bit_length() + 1)}))
            drawn = choices[torch.randint(len(choices), shape)]
        else:
            drawn = torch.randint(low, high + 1, shape)
        return drawn if shape else int(drawn)

    @property
    def num_tokens(self) -> int:
        """K = int(keep_ratio · N) kept cells."""
        return int(self.keep_ratio * self.num_cells)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "MQVAEConfig":
        """Validate a `model:` section in mvq's layout (`mvq.convert.mqvae_config_section` translates others)."""
        if "params" in mapping or "target" in mapping:
            raise ConfigError("model: has 'target'/'params' keys, the layout of the reference release; translate "
                              "it first with mvq.convert.mqvae_config_section (a whole training config: "
                              "`mvq convert-config`; a checkpoint: `mvq convert-original`)")
        return build_dataclass(cls, mapping, "model")


@dataclass
class MQVAEOutput:
    reconstruction: torch.Tensor  # B×3×R×R
    codebook_loss: torch.Tensor   # scalar
    codes: torch.Tensor           # B×K long
    positions: torch.Tensor       # B×K long, ascending
    keep_mask: torch.Tensor       # B×H×W bool
    scores: torch.Tensor          # B×H×W, score-network output in (0, 1)


class MQVAE(Tokenizer):
    """Masked-quantization VAE. `tokenize` / `detokenize` are the interface to stage 2."""

    model_type = "mqvae"
    config_class = MQVAEConfig
    display_name = MQVAEConfig.DISPLAY_NAME
    config: MQVAEConfig

    def __init__(self, config: MQVAEConfig):
        super().__init__(config)  # the encoder
        c = config
        self.masker = build_masker(c.mask_choice, c.z_channels, c.codebook_dim, c.num_tokens)
        self.quantizer = EMAVectorQuantizer(c.codebook_size, c.codebook_dim, decay=c.ema_decay,
                                            commitment_beta=c.commitment_beta,
                                            restart_unused_codes=c.restart_unused_codes)
        self.demasker = AdaptiveDemasker(c.codebook_dim, c.z_channels, c.grid_size, c.demask_layers, c.mask_init_value,
                                         attention=c.demask_attention, mask_update=c.mask_update,
                                         norm_groups=c.norm_groups)
        self.decoder = Decoder(out_channels=c.in_channels, ch=c.ch, ch_mult=c.ch_mult,
                               num_res_blocks=c.num_res_blocks, attn_resolutions=c.attn_resolutions,
                               resolution=c.resolution, dropout=c.dropout, norm_groups=c.norm_groups)

    def forward(self, images: torch.Tensor, keep: int | float | torch.Tensor | None = None) -> MQVAEOutput:
        """Reconstruct `images` (B×C×R×R in [-1, 1]) from K kept cells, or from `keep` (a count or a ratio,
        or a B-long tensor of counts, one per image: `keep_mask` then marks each image's own cells).

        Only the shape is checked (no host sync in training or evaluation steps); call
        `check_images` first on images that may hold NaN or values outside [-1, 1].
        """
        self.check_image_shape(images)
        masked = self.masker(self.encoder(images), None if keep is None else self.config.keep_count(keep))
        quantized, codebook_loss, codes = self.quantizer(masked.features)
        reconstruction = self.decoder(self.demasker(quantized, masked.positions, masked.keep_mask))
        g = self.config.grid_size
        return MQVAEOutput(reconstruction, codebook_loss, codes, masked.positions,
                           masked.keep_mask.view(-1, g, g), masked.scores.view(-1, g, g))

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor, keep: int | float | torch.Tensor | None = None,
                 order: str = "raster") -> tuple[torch.Tensor, torch.Tensor]:
        """Images → (codes, positions), each B×K long (or B×keep: a count or a ratio of the cells). The cells
        kept at a budget are a subset of those kept at any larger one. Refuses bad pixels.

        `order`: "raster" (positions ascending) or "rank" (the most important cell first: the first k
        tokens are then the image's tokens at budget k). With per-image counts (`keep` a B-long tensor)
        the rows are as long as the largest count: each holds its own tokens, then -1 in both tensors
        (`detokenize` reads them so)."""
        if order not in TOKEN_ORDERS:
            raise InvalidInputError(f"token order must be one of {', '.join(TOKEN_ORDERS)}, got {order!r}")
        self.check_images(images)
        masked = self.masker(self.encoder(images), None if keep is None else self.config.keep_count(keep))
        codes, positions = self.quantizer.nearest_codes(masked.features), masked.positions
        if order == "raster" and not isinstance(keep, torch.Tensor):
            return codes, positions  # one budget, positions ascending: already in order
        own = masked.keep_mask.gather(1, positions)
        # Sort key: an image's own cells first, then by position (raster) or by falling score (rank; ties
        # to the lower cell, as the ranking itself breaks them).
        rank = (masked.scores.gather(1, positions).argsort(dim=1, descending=True, stable=True).argsort(dim=1)
                if order == "rank" else positions)
        order_index = torch.where(own, rank, rank + self.config.num_cells).argsort(dim=1)
        own = own.gather(1, order_index)
        codes = torch.where(own, codes.gather(1, order_index), -1)
        positions = torch.where(own, positions.gather(1, order_index), -1)
        return codes, positions

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(codes, positions) → images in about [-1, 1]. Positions need not be sorted; rows of different
        lengths end in -1 (as `tokenize` with per-image counts writes them; the first entry is a token)."""
        if codes.shape != positions.shape or codes.dim() != 2:
            raise InvalidInputError(f"codes and positions must both be B×K, got {tuple(codes.shape)} and "
                             f"{tuple(positions.shape)}")
        return self.decode_tokens(codes, positions)

    def decode_tokens(self, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Codes at positions → images; the decode path behind `detokenize` (without its input checks)."""
        n = self.config.num_cells
        padding = positions < 0
        # Padding repeats the row's first token (same cell, same code): it writes nothing new.
        codes = torch.where(padding, codes[:, :1], codes)
        positions = torch.where(padding, positions[:, :1], positions)
        keep_mask = torch.zeros(codes.shape[0], n, dtype=torch.bool, device=codes.device)
        keep_mask.scatter_(1, positions, True)
        quantized = self.quantizer.lookup(codes)
        return self.decoder(self.demasker(quantized, positions, keep_mask))
