"""MQ-VAE: encoder → adaptive mask → EMA quantizer → adaptive de-mask → decoder.

An image becomes K (code, position) pairs instead of H×W codes (docs/method.md §1–4).
The config uses mvq's names only; `mvq.convert` translates the reference release's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from mvq.config import ConfigError, build_dataclass
from mvq.errors import InvalidInputError
from mvq.models.tokenizer_base import Tokenizer, TokenizerConfig
from mvq.nn import (DEMASK_ATTENTIONS, MASK_CHOICES, MASK_UPDATES, AdaptiveDemasker, Decoder, EMAVectorQuantizer,
                    build_masker)


@dataclass
class MQVAEConfig(TokenizerConfig):
    """Architecture of an MQ-VAE. Defaults are the paper's ImageNet model (f8, keep 25%).

    The encoder/decoder fields come from `TokenizerConfig`; these follow them.
    """

    POSITIVE_FIELDS = (*TokenizerConfig.POSITIVE_FIELDS, "demask_layers")

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

    @property
    def num_tokens(self) -> int:
        """K = int(keep_ratio · N) kept cells."""
        return int(self.keep_ratio * self.num_cells)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "MQVAEConfig":
        """Validate a `model:` section in mvq's layout (`mvq.convert.mqvae_config_section` translates others)."""
        if "params" in mapping or "target" in mapping:
            raise ConfigError("model: has 'target'/'params' keys, the layout of the reference release; translate "
                              "it first with mvq.convert.mqvae_config_section (or `mvq convert-original`)")
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
    display_name = "MQ-VAE"
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

    def forward(self, images: torch.Tensor) -> MQVAEOutput:
        """Reconstruct `images` (B×C×R×R in [-1, 1]).

        Only the shape is checked (no host sync in training or evaluation steps); call
        `check_images` first on images that may hold NaN or values outside [-1, 1].
        """
        self.check_image_shape(images)
        masked = self.masker(self.encoder(images))
        quantized, codebook_loss, codes = self.quantizer(masked.features)
        reconstruction = self.decoder(self.demasker(quantized, masked.positions, masked.keep_mask))
        g = self.config.grid_size
        return MQVAEOutput(reconstruction, codebook_loss, codes, masked.positions,
                           masked.keep_mask.view(-1, g, g), masked.scores.view(-1, g, g))

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images → (codes, positions), each B×K long, positions ascending. Refuses bad pixels (`check_images`)."""
        self.check_images(images)
        masked = self.masker(self.encoder(images))
        return self.quantizer.nearest_codes(masked.features), masked.positions

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(codes, positions) → images in about [-1, 1]. Positions need not be sorted."""
        if codes.shape != positions.shape or codes.dim() != 2:
            raise InvalidInputError(f"codes and positions must both be B×K, got {tuple(codes.shape)} and "
                             f"{tuple(positions.shape)}")
        return self.decode_tokens(codes, positions)

    def decode_tokens(self, codes: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Codes at positions → images; the decode path behind `detokenize` (without its input checks)."""
        n = self.config.num_cells
        keep_mask = torch.zeros(codes.shape[0], n, dtype=torch.bool, device=codes.device)
        keep_mask.scatter_(1, positions, True)
        quantized = self.quantizer.lookup(codes)
        return self.decoder(self.demasker(quantized, positions, keep_mask))
