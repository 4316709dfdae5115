"""The reference release's `train.py` command line, translated into an `mvq train` command line.

    python train.py --gpus -1 --base configs/stage1/mqvae_imagenet_f8_r25.yml --max_epochs 50

`--base X.yml` finds mvq's `X.yaml` of the same stem (a config in the reference's own layout is
converted by `mvq.convert.config`); `--gpus`, `--max_epochs`, `--max_steps`,
`--seed`, `--resume`, `--logdir` and `key=value` overrides anywhere on the line (mvq's keys, or
the reference's own names for the commonly tuned ones) are mapped.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from mvq.config import load_yaml
from mvq.convert.config import write_native_config
from mvq.convert.layout import is_reference_model_section
from mvq.convert.names import MQVAE_NAMES, STACKFORMER_NAMES
from mvq.distributed import check_accelerator
from mvq.errors import UserError

# Reference config keys users set on the command line (the authors' README), and ours: model keys
# are renamed as the config loader renames them (`mvq.convert.names`).
_MODEL_PARAMS = {"masker_config": ("topk_ratio",), "demasker_config": ("n_layer", "mask_init_value"),
                 "vqconfig": ("codebook_size", "codebook_dim"), "transformer_config": ("value_layer", "position_layer")}
_MODEL_NAMES = {**MQVAE_NAMES, **STACKFORMER_NAMES}
REFERENCE_KEYS = {
    **{f"model.params.{section}.params.{key}": f"model.{_MODEL_NAMES.get(key, key)}"
       for section, keys in _MODEL_PARAMS.items() for key in keys},
    "model.params.lossconfig.params.disc_start": "loss.disc_start",
    "model.params.lossconfig.params.disc_weight": "loss.disc_weight",
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
    raise UserError(f"config {base} not found (looked for {path.with_suffix('.yaml')} too)")


def gpu_overrides(value: str, gpu_available: bool | None = None) -> list[str]:
    """The reference's `--gpus` (Lightning 1.x: `0` CPU, `N` N GPUs, `-1` all, `0,1` or `0,` indices) as overrides.

    GPUs are what `mvq.distributed.gpu_available` finds (`gpu_available` None: ask PyTorch).
    """
    text = value.strip()
    indices = [part for part in text.split(",") if part.strip()]
    if "," not in text and text in ("", "0"):
        return ["trainer.accelerator=cpu"]
    try:
        numbers = [int(part) for part in indices]
    except ValueError:
        raise UserError(f"--gpus {value}: expected -1 (all GPUs), a count like 2, or indices like 0,1") from None

    check_accelerator("gpu", f"--gpus {value}", "--gpus 0", available=gpu_available)
    if "," in text:
        return ["trainer.accelerator=gpu", f"trainer.devices=[{','.join(map(str, numbers))}]"]
    return ["trainer.accelerator=gpu", f"trainer.devices={numbers[0]}"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train.py", description="reference-compatible front end of `mvq train`")
    parser.add_argument("-b", "--base", nargs="+", help="config file")
    parser.add_argument("--gpus", help="0 for the CPU, -1 for all GPUs, N for N GPUs, or indices like 0,1")
    parser.add_argument("--max_epochs", type=int)
    parser.add_argument("--max_steps", type=int)
    parser.add_argument("-s", "--seed", type=int)
    parser.add_argument("-r", "--resume", help="run folder (or a checkpoint inside it) to continue")
    parser.add_argument("-l", "--logdir", help="run folder")
    return parser


def _our_key(item: str) -> str:
    key, value = item.split("=", 1)
    key = key.lstrip("-")
    if key.startswith(("model.params.", "data.params.")) or key in REFERENCE_KEYS:
        if key not in REFERENCE_KEYS:
            raise UserError(f"reference key {key} has no mvq equivalent here; use mvq's config keys (see configs/)")
        key = REFERENCE_KEYS[key]
    parts = key.split(".")
    if len(parts) == 2 and parts[0] == "model" and parts[1] in _MODEL_NAMES:  # model.topk_ratio → model.keep_ratio
        key = f"model.{_MODEL_NAMES[parts[1]]}"
    return f"{key}={value}"


def native_base(base: str) -> str:
    """The config `--base` names; a reference-layout YAML is converted (once, into a temporary file)."""
    path = resolve_config(base)
    if not is_reference_model_section(load_yaml(path).get("model")):
        return path
    folder = Path(tempfile.mkdtemp(prefix="mvq-converted-"))
    return str(write_native_config(path, folder / (Path(path).stem + ".yaml")))


def translate(argv: list[str], gpu_available: bool | None = None) -> list[str]:
    """The reference's `train.py` arguments → `mvq train` arguments (`gpu_available` defaults to asking torch)."""
    args, rest = _parser().parse_known_args(argv)
    bases = list(args.base or [])
    overrides = [item for item in bases[1:] + rest if "=" in item and not item.startswith("-")]
    unsupported = [item for item in bases[1:] + rest if item not in overrides]
    if unsupported:
        raise UserError(f"unsupported arguments: {' '.join(unsupported)} (one --base config, options, and "
                        f"key=value overrides are understood)")
    out: list[str] = ["train"]
    if args.resume:
        run_dir = Path(args.resume)
        if run_dir.is_file():  # a checkpoint: its run folder is two levels up
            run_dir = run_dir.parent.parent
        out += ["--resume", str(run_dir)]
    elif bases:
        out.append(native_base(bases[0]))
    if args.logdir:
        out += ["--run-dir", args.logdir]
    if args.gpus is not None:
        out += gpu_overrides(args.gpus, gpu_available)
    if args.max_epochs is not None:
        out.append(f"trainer.max_epochs={args.max_epochs}")
    if args.max_steps is not None:
        out.append(f"trainer.max_steps={args.max_steps}")
    if args.seed is not None:
        out.append(f"run.seed={args.seed}")
    out += [_our_key(item) for item in overrides]
    return out
