"""Map the reference release's Stackformer (state dict and transformer params) onto ours.

Their `ReverseStackedPositionGPT` (stored under `transformer.*` in their Lightning
checkpoint) names the code stream "value": `value_emb` (token embedding), `value_pos_emb`
(position embedding), `pos_emb` (1 × block_size × width step embedding),
`value_transformer.*` / `position_transformer.*` (blocks with separate query/key/value
linears, `ln1`/`ln2`, `mlp.{0,2}`, and a causal-mask buffer), and `value_head` /
`position_head` (LayerNorm, bias-free linear).

Differences handled here: our attention has one fused qkv linear; our step embedding has
exactly K rows (theirs has block_size, often the whole grid); and our token ids put the
codes first (code c is id c) with the start tokens after them, whereas their
class-conditional layout puts the class tokens first (code c is id n_classes + c).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch

from mvq.convert.names import STACKFORMER_NAMES, rename_reference_keys
from mvq.convert.weights import load_converted_weights
from mvq.errors import InvalidInputError
from mvq.models.stackformer import Stackformer

_BLOCK_RENAMES = {
    "ln1": "norm1",
    "ln2": "norm2",
    "attn.proj": "attn.proj",
    "mlp.0": "mlp.fc",
    "mlp.2": "mlp.proj",
}
_STACKS = {"value_transformer": "code_transformer", "position_transformer": "position_transformer"}
_BLOCK_KEY = re.compile(r"^(value_transformer|position_transformer)\.(\d+)\.(.+)\.(weight|bias)$")


def _first(params: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if params.get(name) is not None:
            return params[name]
    return default


def stackformer_config_section(section: Mapping[str, Any]) -> dict:
    """A Stackformer `model:` section with the reference's key names (`n_embd`, `value_layer`, ...) renamed to ours."""
    return rename_reference_keys(section, STACKFORMER_NAMES)


def stackformer_config_from_original(reference_params: Mapping[str, Any]) -> dict:
    """Reference transformer params (plus what they do not record) → our `model:` mapping.

    `reference_params` is their `transformer_config.params` (`vocab_size`, `position_size`,
    `block_size`, `value_layer`, `position_layer`, `n_head`, `n_embd`, `*_pdrop`) together
    with the facts that live elsewhere in their config: `n_classes` (0 or absent for
    unconditional), `num_tokens` (or `kept`: K, from the MQ-VAE's keep ratio), and
    optionally `codebook_size`, `grid_size` (or `grid`) and `loss_position_weight`.
    `reference_params_from_yaml` collects all of them from their stage-2 YAML.
    """
    p = dict(reference_params)
    missing = [k for k in ("vocab_size", "position_size", "n_embd", "n_head", "value_layer", "position_layer")
               if k not in p]
    if missing:
        raise InvalidInputError(f"reference transformer params lack {', '.join(missing)}")
    num_cells = int(p["position_size"]) - 1
    grid = _first(p, "grid_size", "grid", default=math.isqrt(num_cells))
    if grid * grid != num_cells:
        raise InvalidInputError(f"position_size {p['position_size']} is not H·W + 1 for a square grid of size {grid}")
    vocab = int(p["vocab_size"])
    num_classes = _first(p, "n_classes", "num_classes")
    codebook_size = _first(p, "codebook_size")
    if num_classes is None:
        if codebook_size is None:
            raise InvalidInputError("cannot tell the codebook size from the class count: give n_classes (0 for an "
                             "unconditional model) or codebook_size with the reference params")
        num_classes = vocab - codebook_size
        num_classes = 0 if num_classes == 1 else num_classes
    num_classes = int(num_classes)
    expected_codebook = vocab - (num_classes if num_classes else 1)
    if codebook_size is not None and codebook_size != expected_codebook:
        raise InvalidInputError(f"vocab_size {vocab} does not fit codebook_size {codebook_size} with "
                         f"{num_classes or 'one start'} {'classes' if num_classes else 'token'}")
    num_tokens = _first(p, "num_tokens", "kept")
    if num_tokens is None:
        raise InvalidInputError("the reference params do not record K (the number of kept tokens; their block_size is "
                         "only an upper bound): give num_tokens, e.g. int(keep_ratio · H · W) of the MQ-VAE")
    block_size = p.get("block_size")
    if block_size is not None and int(block_size) < int(num_tokens):
        raise InvalidInputError(f"block_size {block_size} is shorter than the {num_tokens} steps of a sequence")
    return {
        "codebook_size": expected_codebook,
        "grid_size": int(grid),
        "num_tokens": int(num_tokens),
        "num_classes": num_classes,
        "code_layers": int(p["value_layer"]),
        "position_layers": int(p["position_layer"]),
        "dim": int(p["n_embd"]),
        "heads": int(p["n_head"]),
        "dropout": float(_first(p, "resid_pdrop", "embd_pdrop", default=0.0)),
        "class_dropout": 0.0,
        "position_loss_weight": float(_first(p, "loss_position_weight", "position_loss_weight", default=1.0)),
    }


def _reorder_vocab(weight: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows in their token order → ours (codes first, then the class tokens)."""
    if num_classes == 0:
        return weight.clone()
    return torch.cat([weight[num_classes:], weight[:num_classes]]).clone()


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    if any(k.startswith("transformer.") for k in state_dict):
        return {k[len("transformer."):]: v for k, v in state_dict.items() if k.startswith("transformer.")}
    return dict(state_dict)


def stackformer_from_original(state_dict: Mapping[str, torch.Tensor], reference_params: Mapping[str, Any],
                              ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Reference Stackformer → (our config mapping, our state dict).

    `state_dict` may be their whole Lightning `state_dict` (only `transformer.*` is used;
    the first-stage weights are converted separately) or the transformer's own state dict.
    Unknown or missing keys are an error.
    """
    config = stackformer_config_from_original(reference_params)
    sd = _strip_prefix(state_dict)
    n_cls, k, dim = config["num_classes"], config["num_tokens"], config["dim"]
    ours: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith(".attn.mask"):
            continue  # their causal-mask buffer
        if key == "pos_emb":
            if value.shape[1] < k:
                raise InvalidInputError(f"pos_emb has {value.shape[1]} steps, fewer than K = {k}")
            ours["step_embedding.weight"] = value[0, :k].clone()
        elif key == "value_pos_emb.weight":
            ours["position_embedding.weight"] = value.clone()
        elif key == "value_emb.weight":
            ours["code_embedding.weight"] = _reorder_vocab(value, n_cls)
        elif key.startswith(("value_head.", "position_head.")):
            stream = "code" if key.startswith("value_head.") else "position"
            index, name = key.split(".")[1:]
            if index == "0":
                ours[f"{stream}_norm.{name}"] = value.clone()
            elif index == "1" and name == "weight":
                ours[f"{stream}_head.weight"] = _reorder_vocab(value, n_cls) if stream == "code" else value.clone()
            else:
                raise InvalidInputError(f"unexpected key {key!r} in the reference Stackformer state dict")
        elif match := _BLOCK_KEY.match(key):
            stack, index, inner, kind = match.groups()
            prefix = f"{_STACKS[stack]}.blocks.{index}"
            if inner in ("attn.query", "attn.key", "attn.value"):
                qkv.setdefault((prefix, kind, "qkv"), {})[inner.split(".")[1]] = value
            elif inner in _BLOCK_RENAMES:
                ours[f"{prefix}.{_BLOCK_RENAMES[inner]}.{kind}"] = value.clone()
            else:
                raise InvalidInputError(f"unexpected key {key!r} in the reference Stackformer state dict")
        else:
            raise InvalidInputError(f"unexpected key {key!r} in the reference Stackformer state dict")
    for (prefix, kind, _), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise InvalidInputError(f"{prefix}: the reference block lacks some of query/key/value {kind}")
        ours[f"{prefix}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    if "step_embedding.weight" not in ours:  # add_absolute_position = false: no step embedding
        ours["step_embedding.weight"] = torch.zeros(k, dim)
    return config, ours


def reference_params_from_yaml(config: Mapping[str, Any]) -> dict:
    """Everything `stackformer_from_original` needs, from the reference's whole stage-2 YAML.

    Reads `model.params.transformer_config.params`, the class count (`n_classes`, absent for
    unconditional models), `loss_position_weight`, and from the first-stage config the codebook
    size and K = int(topk_ratio · input_token_num).
    """
    model = config.get("model", config)
    params = dict(model.get("params", model))
    transformer = params.get("transformer_config")
    if transformer is None:
        raise InvalidInputError("the reference config has no model.params.transformer_config")
    out = dict(transformer.get("params", transformer))
    is_class = "n_classes" in params or "ClassTransformer" in str(model.get("target", ""))
    out["n_classes"] = int(params.get("n_classes", 0)) if is_class else 0
    if params.get("loss_position_weight") is not None:
        out["loss_position_weight"] = params["loss_position_weight"]
    first = params.get("first_stage_config") or {}
    first = dict(first.get("params", first))
    masker = first.get("masker_config") or {}
    masker = dict(masker.get("params", masker))
    vq = first.get("vqconfig") or first.get("vq_config") or {}
    vq = dict(vq.get("params", vq))
    if "topk_ratio" in masker and "input_token_num" in masker:
        out["num_tokens"] = int(masker["topk_ratio"] * masker["input_token_num"])
    if "codebook_size" in vq:
        out["codebook_size"] = int(vq["codebook_size"])
    return out


def is_original_stackformer_config(config: Mapping[str, Any]) -> bool:
    """Whether a reference YAML (as parsed) describes a stage-2 Stackformer rather than an MQ-VAE."""
    model = config.get("model", config)
    params = model.get("params", model) if isinstance(model, Mapping) else {}
    return isinstance(params, Mapping) and "transformer_config" in params


def load_original_stackformer(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]):
    """Their checkpoint state dict + their whole stage-2 YAML (as parsed) → our `Stackformer` (eval mode)."""
    mapping, ours = stackformer_from_original(state_dict, reference_params_from_yaml(config))
    model = Stackformer.from_config(mapping)
    load_converted_weights(model, ours, "reference Stackformer")
    return model.eval()

