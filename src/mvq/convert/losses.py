"""Map the reference release's stage-1 loss onto ours: its `lossconfig.params` and discriminator weights.

Their discriminator keeps the PatchGAN's layers in one `nn.Sequential` called `main`
(activations included), stored under `loss.discriminator.main.<index>.*` in their checkpoints.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from mvq.config import ConfigError, build_dataclass
from mvq.losses.discriminator import PatchDiscriminator
from mvq.losses.stage1 import Stage1LossConfig

# Reference loss parameters that we name differently, and those whose only supported value
# is the one given (anything else is a variant this package does not implement).
_ORIGINAL_RENAMED = {"disc_num_layers": "disc_layers", "disc_ndf": "disc_channels"}
_ORIGINAL_FIXED = {"disc_conditional": False, "disc_in_channels": 3, "use_actnorm": False,
                   "disc_loss": "hinge", "pixelloss_weight": 1.0, "disc_adaptive_loss": True}

ORIGINAL_PREFIX = "loss.discriminator."
_ORIGINAL_KEY = re.compile(r"main\.(\d+)\.(.+)")


def loss_config_from_original(params: Mapping[str, Any]) -> Stage1LossConfig:
    """Our loss config from the reference's `lossconfig.params` (its names accepted)."""
    kwargs = {}
    for key, value in params.items():
        if key in _ORIGINAL_FIXED:
            if value != _ORIGINAL_FIXED[key]:
                raise ConfigError(f"reference loss option {key}={value!r} is not supported "
                                  f"(only {_ORIGINAL_FIXED[key]!r})")
            continue
        kwargs[_ORIGINAL_RENAMED.get(key, key)] = value
    return build_dataclass(Stage1LossConfig, kwargs, "loss")


def load_original_discriminator(state_dict: Mapping[str, torch.Tensor]) -> PatchDiscriminator:
    """A discriminator holding the weights of a reference checkpoint (depth and widths inferred)."""
    return PatchDiscriminator.from_state_dict(discriminator_from_original(state_dict))


def discriminator_from_original(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map reference discriminator weights (`[loss.discriminator.]main.<i>.*`) to our keys.

    Accepts a whole reference checkpoint state dict (only `loss.discriminator.*` is read) or
    the discriminator's own. In the reference `main` sequence, index 0 is the stem conv and
    the last index the head conv; each block in between takes three indices (conv, norm,
    activation), so block b has its conv at 2 + 3b and its norm at 3 + 3b.
    """
    if any(key.startswith(ORIGINAL_PREFIX) for key in state_dict):
        state_dict = {key[len(ORIGINAL_PREFIX):]: value for key, value in state_dict.items()
                      if key.startswith(ORIGINAL_PREFIX)}
    parsed = {}
    for key, value in state_dict.items():
        match = _ORIGINAL_KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"unexpected reference discriminator key {key!r}: expected main.<index>.<name>")
        parsed[(int(match.group(1)), match.group(2))] = value
    if not parsed:
        raise ValueError("no reference discriminator weights found (keys loss.discriminator.main.* or main.*)")
    indices = sorted({index for index, _ in parsed})
    last = indices[-1]
    if last < 2 or (last - 2) % 3:
        raise ValueError(f"reference discriminator layout not recognised: last layer index {last} "
                         "(a PatchGAN with n layers ends at index 2 + 3n)")
    n_layers = (last - 2) // 3
    ours = {}
    for (index, name), value in parsed.items():
        if index == 0:
            ours[f"stem.{name}"] = value
        elif index == last:
            ours[f"head.{name}"] = value
        elif (index - 2) % 3 == 0:
            ours[f"blocks.{(index - 2) // 3}.conv.{name}"] = value
        elif (index - 3) % 3 == 0 and (index - 3) // 3 < n_layers:
            if name in ("loc", "scale", "initialized"):
                raise ValueError("the reference discriminator uses ActNorm (use_actnorm=True); "
                                 "only the BatchNorm variant is supported")
            ours[f"blocks.{(index - 3) // 3}.norm.{name}"] = value
        else:
            raise ValueError(f"reference key main.{index}.{name} belongs to no layer of a "
                             f"{n_layers}-layer PatchGAN (activations have no weights)")
    return ours
