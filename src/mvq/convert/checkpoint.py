"""A reference-release checkpoint (their Lightning `.ckpt` and YAML) → an mvq pretrained folder.

taming-transformers' VQGAN checkpoints (the reference's stage 1 is built on them) convert the same
way, into an `mvq.VQGAN` folder: told apart by their YAML (`ddconfig`) or their keys.

Checkpoints are pickles. They are read by `mvq.storage.safe_pickle.load_torch_checkpoint`, which
rebuilds tensors and plain containers and keeps every other object (their Lightning version
stores hyper-parameters as OmegaConf or argparse objects) as an inert placeholder; a file that
asks to call a function is refused, so no code stored in a checkpoint ever runs.

The output folder is written as a whole or not at all: a non-empty `out` is refused unless
`overwrite`, and then replaced entirely (no file of an earlier conversion survives).
"""

from __future__ import annotations

from pathlib import Path

from mvq.storage.atomic import atomic_directory
from mvq.config import ConfigError, load_yaml
from mvq.convert.losses import load_original_discriminator
from mvq.convert.mqvae import config_from_original, from_original
from mvq.convert.stackformer import is_original_stackformer_config, load_original_stackformer
from mvq.convert.taming import from_taming, taming_state_dict
from mvq.convert.weights import load_converted_weights
from mvq.errors import UserError
from mvq.models.mqvae import MQVAE
from mvq.storage.safe_pickle import load_torch_checkpoint


def load_reference_state_dict(path: str | Path) -> dict:
    """The state dict inside a reference checkpoint (Lightning's `state_dict`, or the file itself)."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint not found: {path}")
    checkpoint = load_torch_checkpoint(path)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise UserError(f"{path} holds no state dict (expected a Lightning checkpoint or a saved state dict)")
    return state


# Keys only a taming-transformers VQGAN state dict has (the reference MQ-VAE has no quant convs).
TAMING_KEYS = ("quantize.embedding.weight", "post_quant_conv.weight")


def convert_checkpoint(checkpoint: str | Path, config_path: str | Path, out: str | Path,
                       overwrite: bool = False) -> str:
    """Convert a reference MQ-VAE or Stackformer, or a taming VQGAN, checkpoint into `out`; returns a summary."""
    with atomic_directory(out, overwrite, inputs=[checkpoint, config_path]) as tmp:  # refuses a non-empty `out` before anything is read
        what = _convert_into(checkpoint, config_path, tmp)
    return f"{what} → {out}"


def _convert_into(checkpoint: str | Path, config_path: str | Path, out: Path) -> str:
    """Write the converted folder's files into the (new, empty) folder `out`; returns what was written."""
    raw = load_yaml(config_path)
    params = (raw.get("model") or {}).get("params")
    if not isinstance(params, dict):
        raise ConfigError(f"{config_path} is not a reference config (no model.params section)")
    state = load_reference_state_dict(checkpoint)
    taming_keys = all(key in state for key in TAMING_KEYS)
    if "ddconfig" in params or taming_keys:
        if "ddconfig" not in params:
            raise ConfigError(f"{checkpoint} is a taming-transformers VQGAN checkpoint ({', '.join(TAMING_KEYS)}) "
                              f"but {config_path} is not its config (no model.params.ddconfig): pass the VQGAN's YAML")
        return _convert_vqgan(state, raw, out)
    if is_original_stackformer_config(raw):
        load_original_stackformer(state, raw).save_pretrained(out)
        return "Stackformer"
    return _convert_mqvae(state, raw["model"], out)


def _convert_mqvae(state: dict, model_section: dict, out: Path) -> str:
    """The MQ-VAE, and its discriminator beside it (discriminator.safetensors) when the checkpoint has one."""
    model = MQVAE.from_config(config_from_original(model_section))
    ours, loss = from_original(state)
    load_converted_weights(model, ours, "reference MQ-VAE")
    model.save_pretrained(out)
    if not _save_discriminator(loss, out):
        return "MQ-VAE"
    return "MQ-VAE (with discriminator.safetensors)"


def _convert_vqgan(state: dict, raw: dict, out: Path) -> str:
    """A taming-transformers VQGAN (`mvq.VQGAN`, learned codebook), and its discriminator when the checkpoint has one."""
    model = from_taming(state, raw)
    model.save_pretrained(out)
    _, loss = taming_state_dict(state)
    if not _save_discriminator(loss, out):
        return "VQGAN"
    return "VQGAN (with discriminator.safetensors)"


def _save_discriminator(loss: dict, out: Path) -> bool:
    """Write `loss.discriminator.*` weights (prefix `loss.` removed) as out/discriminator.safetensors, if any."""
    from safetensors.torch import save_file

    disc = {k[len("discriminator."):]: v for k, v in loss.items() if k.startswith("discriminator.")}
    if not disc:
        return False
    weights = load_original_discriminator(disc).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "discriminator.safetensors"))
    return True
