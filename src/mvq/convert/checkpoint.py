"""A reference-release checkpoint (their Lightning `.ckpt` and YAML) → an mvq pretrained folder.

taming-transformers' VQGAN checkpoints (the reference's stage 1 is built on them) convert the same
way, into an `mvq.VQGAN` folder: told apart by their YAML (`ddconfig`) or their keys.

Checkpoints are pickles. They are read with `torch.load(weights_only=True)`, which only
rebuilds tensors and plain containers; a file that holds other Python objects (their
Lightning version may store hyper-parameters as OmegaConf objects) is refused unless the
caller trusts it, because unpickling arbitrary objects can run code stored in the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from mvq.errors import UserError


def load_reference_state_dict(path: str | Path, trust_checkpoint: bool = False) -> dict:
    """The state dict inside a reference checkpoint (Lightning's `state_dict`, or the file itself)."""
    import torch

    if not Path(path).is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_checkpoint:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{path} holds Python objects besides tensors ({reason}); unpickling them could run "
                            f"code stored in the file. If you trust its source, pass --trust-checkpoint") from None
        checkpoint = _load_trusted(path)
    except Exception as exc:
        raise UserError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise UserError(f"{path} holds no state dict (expected a Lightning checkpoint or a saved state dict)")
    return state


def _load_trusted(path: str | Path) -> object:
    """Full unpickling, only ever on the user's explicit `--trust-checkpoint`."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from None


# Keys only a taming-transformers VQGAN state dict has (the reference MQ-VAE has no quant convs).
TAMING_KEYS = ("quantize.embedding.weight", "post_quant_conv.weight")


def convert_checkpoint(checkpoint: str | Path, config_path: str | Path, out: str | Path,
                       trust_checkpoint: bool = False) -> str:
    """Convert a reference MQ-VAE or Stackformer, or a taming VQGAN, checkpoint into `out`; returns a summary."""
    from mvq.config import ConfigError, load_yaml
    from mvq.convert.stackformer import is_original_stackformer_config, load_original_stackformer

    raw = load_yaml(config_path)
    params = (raw.get("model") or {}).get("params")
    if not isinstance(params, dict):
        raise ConfigError(f"{config_path} is not a reference config (no model.params section)")
    state = load_reference_state_dict(checkpoint, trust_checkpoint)
    taming_keys = all(key in state for key in TAMING_KEYS)
    if "ddconfig" in params or taming_keys:
        if "ddconfig" not in params:
            raise ConfigError(f"{checkpoint} is a taming-transformers VQGAN checkpoint ({', '.join(TAMING_KEYS)}) "
                              f"but {config_path} is not its config (no model.params.ddconfig): pass the VQGAN's YAML")
        return _convert_vqgan(state, raw, Path(out))
    if is_original_stackformer_config(raw):
        load_original_stackformer(state, raw).save_pretrained(out)
        return f"Stackformer → {out}"
    return _convert_mqvae(state, raw["model"], Path(out))


def _convert_mqvae(state: dict, model_section: dict, out: Path) -> str:
    """The MQ-VAE, and its discriminator beside it (discriminator.safetensors) when the checkpoint has one."""
    from mvq.convert.mqvae import config_from_original, from_original
    from mvq.models.mqvae import MQVAE

    model = MQVAE.from_config(config_from_original(model_section))
    ours, loss = from_original(state)
    model.load_state_dict(ours, strict=True)
    model.save_pretrained(out)
    if not _save_discriminator(loss, out):
        return f"MQ-VAE → {out}"
    return f"MQ-VAE → {out} (with discriminator.safetensors)"


def _convert_vqgan(state: dict, raw: dict, out: Path) -> str:
    """A taming-transformers VQGAN (`mvq.VQGAN`, learned codebook), and its discriminator when the checkpoint has one."""
    from mvq.convert.taming import from_taming, taming_state_dict

    try:
        model = from_taming(state, raw)
    except ValueError as exc:  # keys or shapes that do not fit the config
        raise UserError(f"cannot convert the VQGAN checkpoint: {exc}") from None
    model.save_pretrained(out)
    _, loss = taming_state_dict(state)
    if not _save_discriminator(loss, out):
        return f"VQGAN → {out}"
    return f"VQGAN → {out} (with discriminator.safetensors)"


def _save_discriminator(loss: dict, out: Path) -> bool:
    """Write `loss.discriminator.*` weights (prefix `loss.` removed) as out/discriminator.safetensors, if any."""
    from safetensors.torch import save_file

    from mvq.convert.losses import discriminator_from_original

    disc = {k[len("discriminator."):]: v for k, v in loss.items() if k.startswith("discriminator.")}
    if not disc:
        return False
    save_file({k: v.contiguous() for k, v in discriminator_from_original(disc).items()},
              str(out / "discriminator.safetensors"))
    return True
