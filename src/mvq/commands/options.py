"""Command-line options that several commands share: sampling settings, speed, data loading, outputs."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvq.models.sampling import SamplingConfig


# How --vae / --stackformer name a model, for their help.
MODEL_FORMS = "a folder, a zoo model's name, or a Hugging Face Hub id (org/name)"


def _top_k(value: str) -> int | None:
    k = int(value)
    if k < 0:
        raise argparse.ArgumentTypeError("top-k must be 0 (off) or positive")
    return k or None


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Temperature, top-k and top-p per stream, guidance, raster constraint, cache."""
    parser.add_argument("--temperature", type=float, default=1.0, help="code temperature (default: 1.0)")
    parser.add_argument("--top-k", type=_top_k, default=100, help="code top-k, 0 = off (default: 100)")
    parser.add_argument("--top-p", type=float, default=0.95, help="code top-p, 1 = off (default: 0.95)")
    parser.add_argument("--position-temperature", type=float, default=1.0, help="position temperature (default: 1.0)")
    parser.add_argument("--position-top-k", type=_top_k, default=10, help="position top-k, 0 = off (default: 10)")
    parser.add_argument("--position-top-p", type=float, default=0.95, help="position top-p, 1 = off (default: 0.95)")
    parser.add_argument("--cfg-scale", type=float, default=1.0,
                        help="classifier-free guidance scale; 1 = off (needs a model trained with class_dropout)")
    parser.add_argument("--no-raster-constraint", dest="raster_constraint", action="store_false",
                        help="let positions come in any order (only repeats are forbidden)")
    parser.add_argument("--no-cache", dest="use_cache", action="store_false",
                        help="recompute the whole prefix every step (slow; for checking)")
    parser.add_argument("--num-tokens", type=int, default=None, metavar="K",
                        help="stop after K tokens (default: the model's K); a Stackformer trained on tokens in rank "
                             "order (mvq tokenize --order rank) then gives whole images at budget K")


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """--precision and --compile."""
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                        help="autocast precision of the models (default: fp32; fp16 needs a CUDA GPU). Tokens are "
                             "always drawn from fp32 probabilities")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the transformer stacks (first batch slower; worth it for many images)")


def _keep(value: str) -> int | float:
    """--keep: a whole count of cells, or a ratio with a decimal point."""
    try:
        return float(value) if "." in value else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (32) or a ratio (0.125), got {value!r}") from None


def add_keep_argument(parser: argparse.ArgumentParser) -> None:
    """--keep: an MQ-VAE's token budget (any-K)."""
    parser.add_argument("--keep", type=_keep, default=None, metavar="K",
                        help="an MQ-VAE's token budget: a count of cells (e.g. 32) or a ratio of them (e.g. 0.125); "
                             "default: the model's K. The cells kept are a prefix of the model's ranking, so any "
                             "budget works; a model trained for any K (model.train_keep_min) reconstructs well at "
                             "each")


def check_keep_budget(model, keep: int | float | None) -> None:
    """Refuse --keep for a VQGAN and a budget out of range; say when a fixed-K MQ-VAE works outside its training."""
    from mvq.data.images import notice
    from mvq.errors import UserError

    if keep is None:
        return
    if not hasattr(model.config, "keep_count"):
        raise UserError("--keep needs an MQ-VAE: a VQGAN keeps every cell")
    count = model.config.keep_count(keep)
    if not model.config.any_k and count != model.config.num_tokens:
        notice(f"this MQ-VAE was trained to keep {model.config.num_tokens} cells; at {count} it works outside what "
               "it learned (a model trained with model.train_keep_min reconstructs well at any budget)")


def add_num_workers_argument(parser: argparse.ArgumentParser) -> None:
    """--num-workers: data-loading processes, at most one per CPU (more only wait, and torch warns)."""
    default = min(4, os.cpu_count() or 1)
    parser.add_argument("--num-workers", type=int, default=default,
                        help=f"data loading processes (default: the CPU count, at most 4: here {default})")


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """--overwrite as sample, complete and export mean it: the whole folder is replaced, once `what` is complete."""
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace a non-empty --out folder as a whole: everything in it goes, once the new "
                             f"{what} are complete (until then it is untouched)")


def sampling_config(args: argparse.Namespace) -> SamplingConfig:
    """The validated sampling settings of the command line."""
    from mvq.models.sampling import SamplingConfig

    return SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          position_temperature=args.position_temperature, position_top_k=args.position_top_k,
                          position_top_p=args.position_top_p, cfg_scale=args.cfg_scale,
                          raster_constraint=args.raster_constraint, use_cache=args.use_cache,
                          num_tokens=args.num_tokens)


def add_data_overrides(parser: argparse.ArgumentParser) -> None:
    """Trailing `data.KEY=VALUE` changes of a --data config (a config names where its data lie on one machine)."""
    parser.add_argument("overrides", nargs="*", metavar="data.KEY=VALUE",
                        help="changes of the --data config's data section, e.g. data.root=/path/to/data")
