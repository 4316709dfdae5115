"""The one check of class labels against a model: unconditional models take none, class models one per sample."""

from __future__ import annotations

from typing import Sequence

import torch

from mvq.errors import UserError


class LabelError(UserError, ValueError):
    """Class labels that do not fit the model."""


def labels_tensor(labels: torch.Tensor | Sequence[int] | int | None, num_classes: int, batch_size: int,
                  device: torch.device | str = "cpu") -> torch.Tensor | None:
    """`batch_size` long labels on `device` (one label is repeated), or None for an unconditional model."""
    if num_classes == 0:
        if labels is not None:
            raise LabelError("this model is unconditional (num_classes = 0): pass no labels")
        return None
    if labels is None:
        raise LabelError(f"this model is class-conditional ({num_classes} classes): pass one label per sample")
    labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    if labels.numel() == 1:
        labels = labels.expand(batch_size)
    if labels.numel() != batch_size:
        raise LabelError(f"got {labels.numel()} labels for {batch_size} samples")
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        bad = labels[(labels < 0) | (labels >= num_classes)][:5].tolist()
        raise LabelError(f"labels must be in 0..{num_classes - 1}; got {bad}")
    return labels
