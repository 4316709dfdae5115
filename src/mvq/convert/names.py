"""The reference release's names for config keys that mvq names after what they are.

Configs and `key=value` overrides may use either name; the config loader renames the
reference's names to ours before validation, so models only ever see mvq's names.
"""

from __future__ import annotations

from typing import Any, Mapping

MQVAE_NAMES = {"topk_ratio": "keep_ratio", "n_layer": "demask_layers", "decay": "ema_decay"}

STACKFORMER_NAMES = {
    "n_embd": "dim",
    "n_head": "heads",
    "value_layer": "code_layers",
    "position_layer": "position_layers",
    "n_classes": "num_classes",
    "loss_position_weight": "position_loss_weight",
    "kept": "num_tokens",
    "grid": "grid_size",
}


def rename_reference_keys(section: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """`section` with the reference's key names replaced by ours.

    When both names are given, the later one wins, as a `key=value` override appended to a
    config (`model.n_embd=64` over a file's `dim: 128`) is meant to.
    """
    renamed: dict[str, Any] = {}
    for key, value in section.items():
        renamed[names.get(key, key)] = value
    return renamed
