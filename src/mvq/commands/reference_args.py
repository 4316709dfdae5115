"""Translation of the reference release's `train.py` arguments into `mvq train` arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

# Reference config keys users set on the command line (seed README), and ours.
REFERENCE_KEYS = {
    "model.params.masker_config.params.topk_ratio": "model.keep_ratio",
    "model.params.demasker_config.params.n_layer": "model.demask_layers",
    "model.params.demasker_config.params.mask_init_value": "model.mask_init_value",
    "model.params.vqconfig.params.codebook_size": "model.codebook_size",
    "model.params.vqconfig.params.codebook_dim": "model.codebook_dim",
    "model.params.lossconfig.params.disc_start": "loss.disc_start",
    "model.params.lossconfig.params.disc_weight": "loss.disc_weight",
    "model.params.transformer_config.params.value_layer": "model.code_layers",
    "model.params.transformer_config.params.position_layer": "model.position_layers",
    "model.base_learning_rate": "optim.base_lr",
    "model.min_learning_rate": "optim.min_lr",
    "model.params.warmup_epochs": "optim.warmup_epochs",
    "data.params.batch_size": "data.batch_size",
    "data.params.num_workers": "data.num_workers",
}


def resolve_config(base: str) -> str:
    """`configs/stage1/x.yml` → the file itself if it exists, else `configs/stage1/x.yaml`."""
    path = Path(base)
    if path.is_file():
        return str(path)
    for suffix in (".yaml", ".yml"):
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return str(candidate)
    raise SystemExit(f"train.py: error: config {base} not found (looked for {path.with_suffix('.yaml')} too)")


def _gpus(value: str) -> list[str]:
    value = value.strip().rstrip(",")
    if value in ("", "0"):
        return ["trainer.accelerator=cpu"]
    if "," in value:
        return ["trainer.accelerator=gpu", f"trainer.devices=[{value}]"]
    return ["trainer.accelerator=gpu", f"trainer.devices={int(value)}"]


def translate(argv: list[str]) -> list[str]:
    parser = argparse.ArgumentParser(prog="train.py", description="reference-compatible front end of `mvq train`")
    parser.add_argument("-b", "--base", nargs="+", help="config file")
    parser.add_argument("--gpus", help="-1 for all GPUs, N for N GPUs, or a list like 0,1")
    parser.add_argument("--max_epochs", type=int)
    parser.add_argument("--max_steps", type=int)
    parser.add_argument("-s", "--seed", type=int)
    parser.add_argument("-r", "--resume", help="run folder (or a checkpoint inside it) to continue")
    parser.add_argument("-l", "--logdir", help="run folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args, unknown = parser.parse_known_args(argv)
    overrides = [o for o in list(args.overrides) + unknown if "=" in o and not o.startswith("-")]
    ignored = [o for o in unknown if o not in overrides]
    if ignored:
        parser.error(f"unsupported arguments: {' '.join(ignored)}")
    out: list[str] = ["train"]
    if args.resume:
        run_dir = Path(args.resume)
        if run_dir.is_file():  # a checkpoint: its run folder is two levels up
            run_dir = run_dir.parent.parent
        out += ["--resume", str(run_dir)]
    elif args.base:
        out.append(resolve_config(args.base[0]))
    if args.logdir:
        out += ["--run-dir", args.logdir]
    if args.gpus is not None:
        out += _gpus(args.gpus)
    if args.max_epochs is not None:
        out.append(f"trainer.max_epochs={args.max_epochs}")
    if args.max_steps is not None:
        out.append(f"trainer.max_steps={args.max_steps}")
    if args.seed is not None:
        out.append(f"run.seed={args.seed}")
    for item in overrides:
        key, value = item.split("=", 1)
        key = key.lstrip("-")
        if key.startswith("model.params.") or key.startswith("data.params.") or key in REFERENCE_KEYS:
            if key not in REFERENCE_KEYS:
                raise SystemExit(f"train.py: error: reference key {key} has no mvq equivalent here; "
                                 f"use mvq's config keys (see configs/)")
            key = REFERENCE_KEYS[key]
        out.append(f"{key}={value}")
    return out
