"""Loading converted weights into an mvq model: a mismatch is the checkpoint's fault, told in one line."""

from __future__ import annotations

from typing import Mapping

import torch

from mvq.errors import InvalidInputError


def load_converted_weights(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """`model.load_state_dict(state, strict=True)`; missing, extra or misshapen weights raise InvalidInputError."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InvalidInputError(f"the {what} weights do not fit its config: {' '.join(str(exc).split())}") from None
