"""What the stage-1 tokenizers (MQ-VAE, VQGAN) share: encoder fields and their checks, the grid, the image check.

`TokenizerConfig` holds the VQGAN-style encoder/decoder fields (docs/method.md §1) that come first in
both configs, so their config.json keys keep their order; `Tokenizer` builds the encoder and
checks input images. Each architecture adds its own fields, modules and forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mvq.config import ConfigError
from mvq.models.images import check_images
from mvq.models.pretrained import PretrainedMixin
from mvq.nn import Encoder


@dataclass
class TokenizerConfig:
    """Encoder/decoder fields of every tokenizer. Defaults are the paper's f8 model.

    Subclasses list the size fields that must be at least 1 in `POSITIVE_FIELDS` and define
    `codebook_size`, `codebook_dim`, `commitment_beta` and `ema_decay`, checked here too.
    """

    POSITIVE_FIELDS: ClassVar[tuple[str, ...]] = ("resolution", "in_channels", "ch", "num_res_blocks", "z_channels",
                                                  "codebook_size", "codebook_dim", "norm_groups")

    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    z_channels: int = 256
    dropout: float = 0.0
    norm_groups: int = 32  # GroupNorm groups per layer (the gcd with its channels); see mvq.nn.vqgan.group_norm

    def check_common_fields(self) -> None:
        """Raise ConfigError for a bad encoder or codebook field (called first by the subclasses' __post_init__)."""
        for name in self.POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be at least 1, got {getattr(self, name)}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ConfigError(f"model.ch_mult must be a non-empty list of positive multipliers, got "
                              f"{list(self.ch_mult)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"model.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.commitment_beta < 0:
            raise ConfigError(f"model.commitment_beta must be 0 or more, got {self.commitment_beta}")
        if self.resolution % self.downsample_factor:
            raise ConfigError(f"model.resolution {self.resolution} is not divisible by the downsampling "
                              f"factor {self.downsample_factor} (= 2^(len(ch_mult)-1))")

    @property
    def downsample_factor(self) -> int:
        """f = 2^(len(ch_mult)-1): image pixels per grid cell along each side."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid_size(self) -> int:
        """H = W = R / f."""
        return self.resolution // self.downsample_factor

    @property
    def num_cells(self) -> int:
        """N = H·W."""
        return self.grid_size ** 2


class Tokenizer(nn.Module, PretrainedMixin):
    """Base of the stage-1 models: builds the encoder (first, so weights initialise in the same order) and
    checks images. Subclasses set `model_type`, `config_class`, `display_name` and the rest of the model."""

    display_name: ClassVar[str]  # how error messages name the model
    config: TokenizerConfig

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(in_channels=c.in_channels, ch=c.ch, ch_mult=c.ch_mult, num_res_blocks=c.num_res_blocks,
                               attn_resolutions=c.attn_resolutions, resolution=c.resolution,
                               z_channels=c.z_channels, dropout=c.dropout, norm_groups=c.norm_groups)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the decoder's final conv (the adaptive GAN weight is computed there)."""
        return self.decoder.conv_out.weight

    def check_images(self, images: torch.Tensor) -> None:
        """Refuse images of the wrong shape, or with pixels that are not finite or not in [-1, 1].

        `tokenize` calls it; `forward` checks the shape only (the value check costs a host sync), so
        code that hands untrusted images to `forward` calls this first.
        """
        check_images(images, self.config.in_channels, self.config.resolution, True, self.display_name)

    def check_image_shape(self, images: torch.Tensor) -> None:
        """Refuse images that are not B×C×R×R for this model (no host sync)."""
        check_images(images, self.config.in_channels, self.config.resolution, False, self.display_name)
