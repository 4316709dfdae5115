"""The loss weights in the reference release's (and taming's) checkpoints: split off, and their discriminator → ours.

Their discriminator keeps the PatchGAN's layers in one `nn.Sequential` called `main`
(activations included), stored under `loss.discriminator.main.<index>.*` in their checkpoints.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

from mvq.errors import InvalidInputError
from mvq.losses.discriminator import PatchDiscriminator

LOSS_PREFIX = "loss."
ORIGINAL_PREFIX = "loss.discriminator."
_ORIGINAL_KEY = re.compile(r"main\.(\d+)\.(.+)")


def split_loss_weights(state_dict: Mapping[str, torch.Tensor],
                       ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the model's weights, the `loss.*` weights with the prefix removed) of a Lightning state dict.

    Their training modules keep the loss (LPIPS, discriminator) beside the model, so both land in one state dict.
    """
    model: dict[str, torch.Tensor] = {}
    loss: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(LOSS_PREFIX):
            loss[key[len(LOSS_PREFIX):]] = value
        else:
            model[key] = value
    return model, loss


def load_original_discriminator(state_dict: Mapping[str, torch.Tensor]) -> PatchDiscriminator:
    """A discriminator holding the weights of a reference checkpoint (depth and widths inferred).

    Loading them into a module checks that they form one PatchGAN before they are written.
    """
    ours = discriminator_from_original(state_dict)
    try:
        return PatchDiscriminator.from_state_dict(ours)
    except (RuntimeError, KeyError, ValueError) as exc:  # a missing stem, no blocks, shapes that do not fit
        raise InvalidInputError("the reference discriminator weights do not form a PatchGAN: "
                                f"{' '.join(str(exc).split())}") from None


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
            raise InvalidInputError(f"unexpected reference discriminator key {key!r}: expected main.<index>.<name>")
        parsed[(int(match.group(1)), match.group(2))] = value
    if not parsed:
        raise InvalidInputError("no reference discriminator weights found (keys loss.discriminator.main.* or main.*)")
    indices = sorted({index for index, _ in parsed})
    last = indices[-1]
    if last < 2 or (last - 2) % 3:
        raise InvalidInputError(f"reference discriminator layout not recognised: last layer index {last} "
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
                raise InvalidInputError("the reference discriminator uses ActNorm (use_actnorm=True); "
                                 "only the BatchNorm variant is supported")
            ours[f"blocks.{(index - 3) // 3}.norm.{name}"] = value
        else:
            raise InvalidInputError(f"reference key main.{index}.{name} belongs to no layer of a "
                             f"{n_layers}-layer PatchGAN (activations have no weights)")
    return ours
