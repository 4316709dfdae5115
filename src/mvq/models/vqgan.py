"""VQGAN baseline: encoder → 1×1 quant_conv → quantizer → 1×1 post_quant_conv → decoder (docs/method.md §8).

taming-transformers' `VQModel` architecture: every cell of the H×W grid is a token, so an
image becomes N = H·W codes in raster order. It is what the MQ-VAE is compared against, and
it shares the MQ-VAE's interface (forward output, `tokenize` / `detokenize`, pretrained
folders) so the same training, evaluation and export code runs it. Its decoder, unlike the
MQ-VAE's, has its own conv_in and middle block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from mvq.config import ConfigError, build_dataclass
from mvq.errors import InvalidInputError
from mvq.models.tokenizer_base import Tokenizer, TokenizerConfig
from mvq.nn import Decoder, EMAVectorQuantizer, LearnedVectorQuantizer

QUANTIZERS = ("ema", "learned")


@dataclass
class VQGANConfig(TokenizerConfig):
    """Architecture of a VQGAN. Defaults: the MQ-VAE paper model's encoder and decoder widths (f8), every cell a token.

    The encoder/decoder fields come from `TokenizerConfig`. `quantizer`: "ema" (mvq's EMA
    codebook with restarts, as in the MQ-VAE) or "learned" (taming-transformers' codebook
    trained by gradient with its legacy loss).
    """

    DISPLAY_NAME: ClassVar[str] = "VQGAN"

    codebook_size: int = 1024
    codebook_dim: int = 256
    quantizer: str = "ema"
    commitment_beta: float = 0.25
    ema_decay: float = 0.99
    restart_unused_codes: bool = True

    def __post_init__(self) -> None:
        if self.quantizer not in QUANTIZERS:
            raise ConfigError(f"model.quantizer must be one of {', '.join(QUANTIZERS)}; got {self.quantizer!r}")
        self.check_common_fields()

    @property
    def num_tokens(self) -> int:
        """Every cell is a token: K = N."""
        return self.num_cells

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "VQGANConfig":
        """Validate a `model:` section in mvq's layout (`mvq.convert.vqgan_config_from_taming` translates taming's)."""
        if "ddconfig" in mapping or "params" in mapping:
            raise ConfigError("model: has taming-transformers' 'ddconfig'/'params' keys; translate it first with "
                              "mvq.convert.vqgan_config_from_taming")
        return build_dataclass(cls, mapping, "model")


@dataclass
class VQGANOutput:
    reconstruction: torch.Tensor  # B×3×R×R
    codebook_loss: torch.Tensor   # scalar
    codes: torch.Tensor           # B×N long, raster order
    positions: torch.Tensor       # B×N long: 0..N-1 (every cell is kept)
    keep_mask: torch.Tensor       # B×H×W bool, all True
    scores: torch.Tensor          # B×H×W, all 1 (no cell is scored; kept for the MQ-VAE's visualisations)


class VQGAN(Tokenizer):
    """taming-transformers' VQModel. `tokenize` / `detokenize` speak (codes, positions) like the MQ-VAE's."""

    model_type = "vqgan"
    config_class = VQGANConfig
    display_name = VQGANConfig.DISPLAY_NAME
    config: VQGANConfig

    def __init__(self, config: VQGANConfig):
        super().__init__(config)  # the encoder
        c = config
        self.quant_conv = nn.Conv2d(c.z_channels, c.codebook_dim, 1)
        if c.quantizer == "ema":
            self.quantizer: EMAVectorQuantizer | LearnedVectorQuantizer = EMAVectorQuantizer(
                c.codebook_size, c.codebook_dim, decay=c.ema_decay, commitment_beta=c.commitment_beta,
                restart_unused_codes=c.restart_unused_codes)
        else:
            self.quantizer = LearnedVectorQuantizer(c.codebook_size, c.codebook_dim, commitment_beta=c.commitment_beta)
        self.post_quant_conv = nn.Conv2d(c.codebook_dim, c.z_channels, 1)
        self.decoder = Decoder(out_channels=c.in_channels, ch=c.ch, ch_mult=c.ch_mult,
                               num_res_blocks=c.num_res_blocks, attn_resolutions=c.attn_resolutions,
                               resolution=c.resolution, dropout=c.dropout, norm_groups=c.norm_groups,
                               z_channels=c.z_channels)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        """Images → pre-quantization vectors, B×H×W×codebook_dim (channels last, raster order)."""
        return self.quant_conv(self.encoder(images)).permute(0, 2, 3, 1)

    def _decode_vectors(self, quantized: torch.Tensor) -> torch.Tensor:
        """B×H×W×codebook_dim quantized vectors → images."""
        return self.decoder(self.post_quant_conv(quantized.permute(0, 3, 1, 2)))

    def forward(self, images: torch.Tensor) -> VQGANOutput:
        """Reconstruct `images` (B×C×R×R in [-1, 1]); the shape is checked, the pixels by `check_images`."""
        self.check_image_shape(images)
        quantized, codebook_loss, codes = self.quantizer(self._features(images))
        reconstruction = self._decode_vectors(quantized)
        b, g = images.shape[0], self.config.grid_size
        positions = torch.arange(g * g, device=images.device).expand(b, -1)
        keep_mask = torch.ones(b, g, g, dtype=torch.bool, device=images.device)
        scores = torch.ones(b, g, g, device=images.device)
        return VQGANOutput(reconstruction, codebook_loss, codes.flatten(1), positions, keep_mask, scores)

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images → (codes, positions), each B×N long; positions are 0..N-1 (raster order). Refuses bad pixels."""
        self.check_images(images)
        codes = self.quantizer.nearest_codes(self._features(images)).flatten(1)
        return codes, torch.arange(codes.shape[1], device=codes.device).expand_as(codes)

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(codes, positions) → images in about [-1, 1]. Positions (default: raster order) hold every cell once."""
        n = self.config.num_cells
        if codes.dim() != 2 or codes.shape[1] != n:
            raise InvalidInputError(f"a VQGAN decodes B×{n} codes (one per cell), got {tuple(codes.shape)}")
        if positions is not None:
            if positions.shape != codes.shape:
                raise InvalidInputError(f"codes and positions must both be B×{n}, got {tuple(codes.shape)} and "
                                 f"{tuple(positions.shape)}")
            cells = torch.arange(n, device=positions.device).expand_as(positions)
            if not torch.equal(positions.sort(dim=1).values, cells):
                raise InvalidInputError(f"a VQGAN needs a code at every cell: positions must hold each of "
                                        f"0..{n - 1} once")
        return self.decode_tokens(codes, positions)

    def decode_tokens(self, codes: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Codes (at positions, default raster order) → images; the decode path behind `detokenize` (no checks)."""
        if positions is not None:
            codes = torch.empty_like(codes).scatter_(1, positions, codes)  # into raster order
        g = self.config.grid_size
        return self._decode_vectors(self.quantizer.lookup(codes).view(codes.shape[0], g, g, -1))
