"""A reference-release checkpoint (their Lightning `.ckpt` and YAML) → an mvq pretrained folder.

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


def convert_checkpoint(checkpoint: str | Path, config_path: str | Path, out: str | Path,
                       trust_checkpoint: bool = False) -> str:
    """Convert a reference MQ-VAE or Stackformer checkpoint (told apart by its YAML) into `out`; returns a summary."""
    from mvq.config import ConfigError, load_yaml
    from mvq.convert.stackformer import is_original_stackformer_config, load_original_stackformer

    raw = load_yaml(config_path)
    params = (raw.get("model") or {}).get("params")
    if not isinstance(params, dict):
        raise ConfigError(f"{config_path} is not a reference config (no model.params section)")
    state = load_reference_state_dict(checkpoint, trust_checkpoint)
    if is_original_stackformer_config(raw):
        load_original_stackformer(state, raw).save_pretrained(out)
        return f"Stackformer → {out}"
    return _convert_mqvae(state, raw["model"], Path(out))


def _convert_mqvae(state: dict, model_section: dict, out: Path) -> str:
    """The MQ-VAE, and its discriminator beside it (discriminator.safetensors) when the checkpoint has one."""
    from safetensors.torch import save_file

    from mvq.convert.losses import discriminator_from_original
    from mvq.convert.mqvae import config_from_original, from_original
    from mvq.models.mqvae import MQVAE

    model = MQVAE.from_config(config_from_original(model_section))
    ours, loss = from_original(state)
    model.load_state_dict(ours, strict=True)
    model.save_pretrained(out)
    disc = {k[len("discriminator."):]: v for k, v in loss.items() if k.startswith("discriminator.")}
    if not disc:
        return f"MQ-VAE → {out}"
    save_file({k: v.contiguous() for k, v in discriminator_from_original(disc).items()},
              str(out / "discriminator.safetensors"))
    return f"MQ-VAE → {out} (with discriminator.safetensors)"
