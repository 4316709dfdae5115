"""A reference release's training config (`model: {target:, params: {...}}`) → an mvq config, once.

mvq's training configs know only mvq's key names; this is the one place that reads the reference's
layout for training (`mvq convert-config`, and `train.py --base` given a reference YAML). Stage 1:
the MQ-VAE (`config_from_original`), the loss weights, the learning rate and the data batching.
Stage 2: the Stackformer's own architecture (its geometry and classes come from the tokenizer and
the token store, as in every mvq stage-2 config) and its optimisation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from mvq.storage.atomic import atomic_write_text
from mvq.config import ConfigError, load_yaml
from mvq.convert.layout import is_reference_model_section
from mvq.convert.mqvae import config_from_original
from mvq.convert.names import MQVAE_NAMES, STACKFORMER_NAMES
from mvq.convert.stackformer import reference_params_from_yaml

# The reference's loss parameters that mvq's `loss:` section takes under the same name.
LOSS_KEYS = ("disc_start", "disc_weight", "codebook_weight", "perceptual_weight", "disc_factor")
# Data module targets whose dataset mvq reads in the same folder layout.
DATASETS = {"imagenet": "imagenet", "ffhq": "ffhq"}


def _params(section: Any) -> dict:
    return dict(section.get("params", section)) if isinstance(section, Mapping) else {}


def native_config(reference: Mapping[str, Any]) -> dict:
    """An mvq training config (stage 1 or 2) from a reference release's whole YAML mapping."""
    model = reference.get("model")
    if not is_reference_model_section(model):
        raise ConfigError("not a reference release config: its model: section has no target:/params: "
                          "(an mvq config needs no conversion)")
    params = _params(model)
    if "transformer_config" in params:
        out: dict[str, Any] = {"stage": 2, "vae": None, "model": _stackformer_section(reference)}
        optim = {"lr": model["base_learning_rate"]} if "base_learning_rate" in model else {}
    else:
        out = {"model": config_from_original(model), "loss": {k: v for k, v in _params(params.get("lossconfig")).items()
                                                            if k in LOSS_KEYS}}
        optim = {"base_lr": model["base_learning_rate"]} if "base_learning_rate" in model else {}
    if "min_learning_rate" in model:
        optim["min_lr"] = model["min_learning_rate"]
    if "warmup_epochs" in params:
        optim["warmup_epochs"] = params["warmup_epochs"]
    out["optim"] = optim
    out["data"] = _data_section(reference.get("data"), stage=out.get("stage", 1))
    return {key: value for key, value in out.items() if value != {}}


def _stackformer_section(reference: Mapping[str, Any]) -> dict:
    """The Stackformer's own architecture, in mvq's names (geometry and classes come from vae: and the store)."""
    p = reference_params_from_yaml(reference)
    section = {STACKFORMER_NAMES.get(k, k): v for k, v in p.items()
               if k in ("value_layer", "position_layer", "n_embd", "n_head", "loss_position_weight")}
    dropouts = [p[k] for k in ("embd_pdrop", "resid_pdrop", "attn_pdrop") if k in p]
    if dropouts:
        section["dropout"] = max(dropouts)
    return section


def _data_section(data: Any, stage: int) -> dict:
    params = _params(data)
    out = {key: params[key] for key in ("batch_size", "num_workers") if key in params}
    if stage == 1:
        target = str((params.get("train") or {}).get("target", "")).lower()
        for name, dataset in DATASETS.items():
            if name in target:
                out["dataset"] = dataset
    return out


def refuse_reference_names(section: Any, stage: int) -> None:
    """A `model:` section with the reference release's key names is one error naming mvq's names."""
    names = MQVAE_NAMES if stage == 1 else STACKFORMER_NAMES
    found = [key for key in section if key in names] if isinstance(section, Mapping) else []
    if found:
        pairs = ", ".join(f"model.{key} → model.{names[key]}" for key in found)
        raise ConfigError(f"{pairs}: mvq's configs use mvq's key names (`mvq convert-config` translates a "
                          "reference release's config)")


def write_native_config(reference_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert the reference YAML at `reference_path` into an mvq config written (atomically) to `out`."""
    config = native_config(load_yaml(reference_path))
    header = (f"# Converted from the reference release's {Path(reference_path).name} by `mvq convert-config`.\n"
              + ("# Stage 2: set vae=TOKENIZER_FOLDER and data.tokens=STORE when training.\n"
                 if config.get("stage") == 2 else ""))
    return atomic_write_text(Path(out), header + yaml.safe_dump(config, sort_keys=False))
