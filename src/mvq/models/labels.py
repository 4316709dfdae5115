"""The one check of class labels against a model: unconditional models take none, class models one per sample.

Every caller (generation, the pipeline, `mvq sample`, `mvq complete`, the browser demo) goes
through `labels_tensor`; only the words that tell a user how to give labels differ.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mvq.errors import UserError


class LabelError(UserError, ValueError):
    """Class labels that do not fit the model."""


def labels_tensor(labels: torch.Tensor | Sequence[int] | int | None, num_classes: int, batch_size: int,
                  device: torch.device | str = "cpu", *, ask: str = "pass one label per sample (or one for all)",
                  items: str = "samples") -> torch.Tensor | None:
    """`batch_size` long labels on `device` (one label is repeated), or None for an unconditional model.

    `ask` says how to give labels (e.g. the command-line option) when a class-conditional model
    gets none; `items` names what is labelled ("samples", "images") in the count message.
    """
    if num_classes == 0:
        if labels is not None:
            raise LabelError("this model is unconditional (num_classes = 0): it takes no labels")
        return None
    if labels is None:
        raise LabelError(f"this model is class-conditional ({num_classes} classes): {ask}")
    labels = torch.as_tensor(labels, dtype=torch.long, device=device).reshape(-1)
    if labels.numel() == 1:
        labels = labels.expand(batch_size)
    if labels.numel() != batch_size:
        raise LabelError(f"{labels.numel()} labels for {batch_size} {items}: give one label per "
                         f"{items.removesuffix('s')}, or one for all")
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        bad = labels[(labels < 0) | (labels >= num_classes)][:5].tolist()
        raise LabelError(f"labels must be in 0..{num_classes - 1}; got {bad}")
    return labels


def labels_list(labels: Sequence[int] | int | None, num_classes: int, count: int, *,
                ask: str = "pass one label per sample (or one for all)", items: str = "samples") -> list[int] | None:
    """`labels_tensor` as a plain list (`count` labels), or None for an unconditional model."""
    checked = labels_tensor(labels, num_classes, count, ask=ask, items=items)
    return None if checked is None else checked.tolist()
