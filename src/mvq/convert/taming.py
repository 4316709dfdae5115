"""Map taming-transformers' VQGAN (`VQModel`: config and state dict) onto `mvq.VQGAN`.

Their state dict holds `encoder.*` and `decoder.*` (the same VQGAN layout as ours, the decoder
with its own conv_in and middle block), `quant_conv.*`, `post_quant_conv.*` and
`quantize.embedding.weight` (a learned codebook, n_embed × embed_dim); a Lightning checkpoint's
`state_dict` also carries `loss.*` (LPIPS and discriminator), returned separately. Their model
config is `{ddconfig: {...}, n_embed, embed_dim}`, optionally under `params:` (and `model:`).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from mvq.config import ConfigError
from mvq.convert.losses import split_loss_weights
from mvq.convert.weights import load_converted_weights
from mvq.errors import InvalidInputError
from mvq.models.vqgan import VQGAN, VQGANConfig

_SAME_NAME = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# ddconfig keys whose taming default is the only behaviour mvq's VQGAN has.
_FIXED_DDCONFIG = {"double_z": False, "resamp_with_conv": True, "give_pre_end": False, "tanh_out": False,
                   "attn_type": "vanilla", "use_linear_attn": False}
_DDCONFIG_KEYS = {"z_channels", "resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks",
                  "attn_resolutions", "dropout", *_FIXED_DDCONFIG}


def taming_state_dict(state_dict: Mapping[str, torch.Tensor],
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """taming VQModel state dict → (our VQGAN state dict, their `loss.*` weights with the prefix removed).

    Accepts a Lightning checkpoint's `state_dict` directly. Unknown keys are an error.
    """
    model, loss = split_loss_weights(state_dict)
    ours: dict[str, torch.Tensor] = {}
    for key, value in model.items():
        if key == "quantize.embedding.weight":
            ours["quantizer.embedding.weight"] = value
        elif key.startswith(_SAME_NAME) and ".temb_proj." not in key:
            ours[key] = value
        else:
            raise InvalidInputError(f"unexpected key {key!r} in a taming-transformers VQGAN state dict "
                                    f"(expected encoder.*, "
                             f"decoder.*, quant_conv.*, post_quant_conv.*, quantize.embedding.weight, loss.*)")
    return ours, loss


def vqgan_config_from_taming(config: Mapping[str, Any]) -> dict:
    """taming's `{ddconfig, n_embed, embed_dim}` (maybe under `params:` / `model:`) → our VQGAN `model:` section."""
    if "model" in config and isinstance(config["model"], Mapping):
        config = config["model"]
    params = config.get("params", config)
    try:
        dd, n_embed, embed_dim = dict(params["ddconfig"]), params["n_embed"], params["embed_dim"]
    except KeyError as exc:
        raise ConfigError(f"the taming-transformers config lacks {exc.args[0]!r} (model.params.{{ddconfig, n_embed, "
                          f"embed_dim}})") from None
    unknown = sorted(set(dd) - _DDCONFIG_KEYS)
    if unknown:
        raise ConfigError(f"ddconfig keys {unknown} are not supported by mvq's VQGAN; supported: "
                          f"{sorted(_DDCONFIG_KEYS)}")
    for key, supported in _FIXED_DDCONFIG.items():
        if dd.get(key, supported) != supported:
            raise ConfigError(f"ddconfig.{key}={dd[key]!r} is not supported by mvq's VQGAN (only {supported!r})")
    in_channels = dd.get("in_channels", 3)
    if dd.get("out_ch", in_channels) != in_channels:
        raise ConfigError(f"ddconfig.out_ch ({dd['out_ch']}) differs from in_channels ({in_channels}); mvq's VQGAN "
                          "reconstructs its input channels")
    try:
        return {
            "resolution": dd["resolution"], "in_channels": in_channels, "ch": dd["ch"], "ch_mult": list(dd["ch_mult"]),
            "num_res_blocks": dd["num_res_blocks"], "attn_resolutions": list(dd.get("attn_resolutions", [])),
            "z_channels": dd["z_channels"], "dropout": dd.get("dropout", 0.0),
            "codebook_size": n_embed, "codebook_dim": embed_dim, "quantizer": "learned", "commitment_beta": 0.25,
        }
    except KeyError as exc:
        raise ConfigError(f"the taming-transformers ddconfig lacks {exc.args[0]!r}") from None


def from_taming(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> VQGAN:
    """A `VQGAN` (eval mode) with the weights of a taming-transformers VQModel; `loss.*` weights are ignored."""
    model = VQGAN(VQGANConfig.from_mapping(vqgan_config_from_taming(config)))
    ours, _ = taming_state_dict(state_dict)
    load_converted_weights(model, ours, "taming-transformers VQGAN")
    return model.eval()
