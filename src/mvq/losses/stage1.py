"""The stage-1 (MQ-VAE) training objective: reconstruction + codebook + adaptive GAN.

Generator (the MQ-VAE):
    nll  = mean |x - x̂| + perceptual_weight · mean LPIPS(x, x̂)
    loss = nll + codebook_weight · codebook_loss + λ · disc_factor · g,   g = -mean D(x̂)
    λ    = min(clamp(‖∇_w nll‖ / (‖∇_w g‖ + 1e-4), 0, 1e4) · disc_weight, disc_weight_max)
where w is the decoder's last layer weight; the GAN term is zero before `disc_start`, and with
`disc_start: null` there is no discriminator at all (none is built, trained or checkpointed).
The adaptive λ balances the two gradients where they meet the image, so the GAN term never
swamps reconstruction.

Discriminator (PatchGAN): hinge loss ½(mean relu(1 - D(x)) + mean relu(1 + D(x̂))), times
`disc_factor` from `disc_start` on and zero before.

All log values are detached tensors; nothing here forces a host-device sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mvq.config import ConfigError
from mvq.losses.discriminator import PatchDiscriminator
from mvq.losses.perceptual import LPIPS

GRAD_NORM_EPS = 1e-4
MAX_ADAPTIVE_WEIGHT = 1e4


@dataclass
class Stage1LossConfig:
    """The `loss:` section of a stage-1 config (defaults: the paper's ImageNet recipe).

    vgg_weights: path of the VGG16 file LPIPS needs (None: the torch hub cache).
    disc_weight_max: cap on the adaptive GAN weight (None: no cap).
    disc_start: the generator step the GAN terms start at (None: never; no discriminator is built).
    """

    perceptual_weight: float = 1.0
    codebook_weight: float = 1.0
    disc_weight: float = 0.75
    disc_weight_max: float | None = 1.0
    disc_start: int | None = 0
    disc_factor: float = 1.0
    disc_layers: int = 3
    disc_channels: int = 64
    vgg_weights: str | None = None

    def __post_init__(self) -> None:
        for name in ("perceptual_weight", "codebook_weight", "disc_weight", "disc_factor"):
            if getattr(self, name) < 0:
                raise ConfigError(f"loss.{name} must be 0 or more, got {getattr(self, name)}")
        if self.disc_weight_max is not None and self.disc_weight_max < 0:
            raise ConfigError(f"loss.disc_weight_max must be 0 or more (or null), got {self.disc_weight_max}")
        if self.disc_start is not None and self.disc_start < 0:
            raise ConfigError(f"loss.disc_start must be 0 or more (or null: no discriminator), got {self.disc_start}")
        if self.disc_layers < 1 or self.disc_channels < 1:
            raise ConfigError(f"loss.disc_layers and loss.disc_channels must be positive, "
                              f"got {self.disc_layers} and {self.disc_channels}")


def _drop_perceptual_weights(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """LPIPS is frozen and rebuilt from its weight file: keep it out of checkpoints."""
    for key in [k for k in state_dict if k.startswith(prefix + "perceptual.")]:
        del state_dict[key]


def _restore_perceptual_weights(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """Let checkpoints without LPIPS weights load strictly: use the weights already here."""
    if module.perceptual is not None:
        for name, tensor in module.perceptual.state_dict().items():
            state_dict.setdefault(prefix + "perceptual." + name, tensor)


class Stage1Loss(nn.Module):
    """Holds the discriminator (trained by its own optimizer; None when `disc_start` is null) and the
    frozen LPIPS network.

    `perceptual_weight > 0` needs the VGG16 weights; a missing file raises
    `mvq.storage.network_weights.MissingWeightsError` here, before any training step.
    """

    def __init__(self, config: Stage1LossConfig | None = None):
        super().__init__()
        self.config = config = config or Stage1LossConfig()
        self.discriminator = None
        if config.disc_start is not None:
            self.discriminator = PatchDiscriminator(3, config.disc_channels, config.disc_layers)
        self.perceptual = None
        if config.perceptual_weight > 0:
            self.perceptual = LPIPS(config.vgg_weights)
        self.register_state_dict_post_hook(_drop_perceptual_weights)
        self.register_load_state_dict_pre_hook(_restore_perceptual_weights)

    def gan_active(self, global_step: int) -> bool:
        """Whether the GAN terms count at this step (a caller may skip discriminator work otherwise)."""
        config = self.config
        return (self.discriminator is not None and global_step >= config.disc_start
                and config.disc_factor > 0 and config.disc_weight > 0)

    def adaptive_gan_weight(self, nll_loss: torch.Tensor, g_loss: torch.Tensor,
                            last_layer: torch.Tensor) -> torch.Tensor:
        """λ = ‖∇nll‖ / (‖∇g‖ + 1e-4) at `last_layer`, clamped to [0, 1e4], × disc_weight, capped."""
        nll_grad, = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
        g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True)
        weight = nll_grad.norm() / (g_grad.norm() + GRAD_NORM_EPS)
        weight = weight.clamp(0.0, MAX_ADAPTIVE_WEIGHT).detach() * self.config.disc_weight
        if self.config.disc_weight_max is not None:
            weight = weight.clamp(max=self.config.disc_weight_max)
        return weight

    def generator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, codebook_loss: torch.Tensor,
                       global_step: int, last_layer: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The MQ-VAE's loss and its parts (detached), for images in [-1, 1].

        `last_layer` is the decoder's last weight (`model.decoder.conv_out.weight`), needed for
        the adaptive GAN weight while training. Where no gradient can be taken (validation
        under no_grad) the GAN weight is 0, as in the reference.
        """
        if inputs.shape != reconstructions.shape:
            raise ValueError(f"inputs {tuple(inputs.shape)} and reconstructions {tuple(reconstructions.shape)} "
                             "must have the same shape")
        l1 = (inputs - reconstructions).abs().mean()
        if self.perceptual is not None:
            perceptual = self.perceptual(inputs.contiguous(), reconstructions.contiguous()).mean()
        else:
            perceptual = torch.zeros((), device=inputs.device, dtype=l1.dtype)
        nll = l1 + self.config.perceptual_weight * perceptual
        codebook = codebook_loss.mean()
        zero = torch.zeros((), device=inputs.device, dtype=l1.dtype)
        g_loss, gan_weight = zero, zero
        if self.gan_active(global_step):
            g_loss = -self.discriminator(reconstructions.contiguous()).mean()
            if torch.is_grad_enabled() and nll.requires_grad and g_loss.requires_grad:
                if last_layer is None:
                    raise ValueError("generator_loss needs last_layer (the decoder's last weight, "
                                     "model.decoder.conv_out.weight) to weigh the GAN term while training")
                gan_weight = self.adaptive_gan_weight(nll, g_loss, last_layer) * self.config.disc_factor
        loss = nll + gan_weight * g_loss + self.config.codebook_weight * codebook
        logs = {"loss": loss, "l1_loss": l1, "perceptual_loss": perceptual, "nll_loss": nll,
                "codebook_loss": codebook, "g_loss": g_loss, "gan_weight": gan_weight}
        return loss, {name: value.detach() for name, value in logs.items()}

    def discriminator_loss(self, inputs: torch.Tensor, reconstructions: torch.Tensor, global_step: int
                           ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Hinge loss of the discriminator on real `inputs` and (detached) `reconstructions`."""
        if self.discriminator is None:
            raise ValueError("this loss has no discriminator (loss.disc_start is null)")
        logits_real = self.discriminator(inputs.detach().contiguous())
        logits_fake = self.discriminator(reconstructions.detach().contiguous())
        hinge = 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())
        factor = self.config.disc_factor if global_step >= self.config.disc_start else 0.0
        loss = factor * hinge
        return loss, {"disc_loss": loss.detach(), "logits_real": logits_real.detach().mean(),
                      "logits_fake": logits_fake.detach().mean()}
