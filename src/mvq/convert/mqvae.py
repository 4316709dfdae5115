"""Map the reference release's MQ-VAE (config and state dict) onto ours.

Their `MaskedVectorQuantizationModel` stores `encoder.*`, `decoder.*` (VQGAN layout, same as
ours), `masker.score_pred_net.{1,3,4}` (3×3 conv, 1×1 conv, batch norm), `masker.pre_projection`,
`demasker.*` and `quantize.codebook.*` (codebook with one extra padding row). Weights that
their forward pass never uses (`temb_proj` in the de-mask ResNet blocks, the padding row)
are dropped; their `loss.*` weights are returned separately for continuing training.

Their stage-1 config nests the architecture under `model.params.{encoder,decoder,masker,
demasker,vq}_config.params`; `config_from_original` flattens it into our `model:` section,
and `mqvae_config_section` turns either layout (and the reference's key names) into ours.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from mvq.config import ConfigError
from mvq.convert.layout import is_reference_model_section
from mvq.convert.losses import split_loss_weights
from mvq.convert.names import MQVAE_NAMES, rename_reference_keys
from mvq.errors import InvalidInputError

# (reference pattern, our replacement) applied in order to every key.
_RENAMES = [
    (r"^masker\.score_pred_net\.1\.", "masker.score_net.conv1."),
    (r"^masker\.score_pred_net\.3\.", "masker.score_net.conv2."),
    (r"^masker\.score_pred_net\.4\.", "masker.score_net.norm."),
    (r"^masker\.pre_projection\.", "masker.project."),
    (r"^demasker\.post_projection\.", "demasker.project_in."),
    (r"^demasker\.transformer\.blocks\.(\d+)\.resblock\.", r"demasker.blocks.\1.res."),
    (r"^demasker\.transformer\.blocks\.(\d+)\.attn\.", r"demasker.blocks.\1.attn."),
    (r"^demasker\.transformer\.last_resblock\.", "demasker.final_res."),
    (r"^quantize\.codebook\.cluster_size_ema$", "quantizer.cluster_size_ema"),
    (r"^quantize\.codebook\.embed_ema$", "quantizer.embed_ema"),
]
_DROPPED = re.compile(r"\.temb_proj\.")


def from_original(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Reference MQ-VAE state dict → (our MQVAE state dict, their `loss.*` weights with the prefix removed).

    Accepts a Lightning checkpoint's `state_dict` directly. Unknown keys are an error.
    """
    model, loss = split_loss_weights(state_dict)
    ours: dict[str, torch.Tensor] = {}
    for key, value in model.items():
        if _DROPPED.search(key):
            continue
        if key == "quantize.codebook.weight":
            ours["quantizer.codebook"] = value[:-1].clone()  # last row: padding entry, never selected
            continue
        if key == "demasker.mask_token":
            ours["demasker.mask_token"] = value.reshape(-1).clone()
            continue
        new = key
        for pattern, replacement in _RENAMES:
            new = re.sub(pattern, replacement, new)
        if not new.startswith(("encoder.", "decoder.", "masker.", "demasker.", "quantizer.")) or new.startswith("quantize."):
            raise InvalidInputError(f"unexpected key {key!r} in the reference MQ-VAE state dict")
        ours[new] = value
    return ours, loss


def mqvae_config_section(section: Mapping[str, Any]) -> dict:
    """A `model:` section in our layout, from ours (reference key names allowed) or the reference's layout."""
    if is_reference_model_section(section):
        return config_from_original(section)
    return rename_reference_keys(section, MQVAE_NAMES)


def _params(section: Mapping[str, Any] | None, name: str) -> dict:
    if section is None:
        raise ConfigError(f"the reference config has no model.params.{name}")
    return dict(section.get("params", section))


def config_from_original(model_section: Mapping[str, Any]) -> dict:
    """The reference's stage-1 `model:` section (with `params.{encoder,decoder,masker,demasker,vq}_config`) → ours."""
    params = dict(model_section.get("params", model_section))
    enc = _params(params.get("encoder_config"), "encoder_config")
    masker = _params(params.get("masker_config"), "masker_config")
    demasker = _params(params.get("demasker_config"), "demasker_config")
    vq = _params(params.get("vqconfig") or params.get("vq_config"), "vqconfig")
    if enc.get("double_z"):
        raise ConfigError("reference encoder with double_z=true is not an MQ-VAE encoder")
    try:
        config = _flatten_reference_params(enc, masker, demasker, vq)
    except KeyError as exc:
        raise ConfigError(f"the reference config lacks {exc.args[0]!r} (model.params.*_config.params)") from None
    f = 2 ** (len(config["ch_mult"]) - 1)
    if masker.get("input_token_num") not in (None, (config["resolution"] // f) ** 2):
        raise ConfigError(f"reference masker input_token_num {masker['input_token_num']} does not match the "
                          f"{config['resolution'] // f}² grid of the encoder")
    return config


def _flatten_reference_params(enc: dict, masker: dict, demasker: dict, vq: dict) -> dict:
    """Our MQ-VAE keys from the reference's per-module params (a missing required one raises KeyError)."""
    return {
        "resolution": enc["resolution"],
        "in_channels": enc.get("in_channels", 3),
        "ch": enc["ch"],
        "ch_mult": list(enc["ch_mult"]),
        "num_res_blocks": enc["num_res_blocks"],
        "attn_resolutions": list(enc.get("attn_resolutions", [])),
        "z_channels": enc["z_channels"],
        "dropout": enc.get("dropout", 0.0),
        "keep_ratio": masker["topk_ratio"],
        "codebook_size": vq["codebook_size"],
        "codebook_dim": vq.get("codebook_dim", masker.get("codebook_dim")),
        "demask_layers": demasker["n_layer"],
        "mask_init_value": demasker.get("mask_init_value", 0.02),
        "commitment_beta": vq.get("commitment_beta", 0.25),
        "ema_decay": vq.get("decay", 0.99),
        "restart_unused_codes": vq.get("restart_unused_codes", True),
    }
