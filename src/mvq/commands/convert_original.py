"""`mvq convert-original CKPT --config YAML --out DIR`: the reference release's checkpoint → a pretrained folder."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-original", help="convert a checkpoint of the reference implementation",
        description="Convert a Lightning checkpoint of the reference implementation (MQ-VAE or Stackformer, "
                    "told apart by its YAML config) into an mvq pretrained folder. For an MQ-VAE the "
                    "discriminator weights are written too (discriminator.safetensors), so stage-1 training "
                    "can continue from it with run.init_from=DIR.")
    p.add_argument("checkpoint", help="reference .ckpt (or a file holding a plain state dict)")
    p.add_argument("--config", required=True, help="the reference's YAML config of that checkpoint")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def load_reference_state_dict(path: str) -> dict:
    """The state dict inside a reference checkpoint (Lightning's `state_dict`, or the file itself)."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as exc:
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint: {exc}") from exc
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise ValueError(f"{path} holds no state dict")
    return state


def convert(checkpoint: str, config_path: str, out: str) -> str:
    from pathlib import Path

    from mvq.config import load_yaml

    raw = load_yaml(config_path)
    params = (raw.get("model") or {}).get("params")
    if not isinstance(params, dict):
        raise ValueError(f"{config_path} is not a reference config (no model.params section)")
    state = load_reference_state_dict(checkpoint)
    from mvq.convert.stackformer import is_original_stackformer_config, load_original_stackformer

    if is_original_stackformer_config(raw):
        load_original_stackformer(state, raw).save_pretrained(out)
        return f"Stackformer → {out}"
    from safetensors.torch import save_file

    from mvq.convert import from_original
    from mvq.losses.discriminator import discriminator_from_original
    from mvq.models.mqvae import MQVAE

    model = MQVAE.from_config(raw)
    ours, loss = from_original(state)
    model.load_state_dict(ours, strict=True)
    model.save_pretrained(out)
    note = ""
    disc = {k[len("discriminator."):]: v for k, v in loss.items() if k.startswith("discriminator.")}
    if disc:
        save_file({k: v.contiguous() for k, v in discriminator_from_original(disc).items()},
                  str(Path(out) / "discriminator.safetensors"))
        note = " (with discriminator.safetensors)"
    return f"MQ-VAE → {out}{note}"


def run(args: argparse.Namespace) -> int:
    print(convert(args.checkpoint, args.config, args.out))
    return 0
