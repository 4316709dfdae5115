"""`mvq convert-config`: translate a reference release's training config into an mvq config, once."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-config", help="translate a reference release's training config into an mvq config",
        description="Read a training YAML of the reference release (model: {target:, params: {...}}) and write "
                    "the mvq config that trains the same model: the MQ-VAE (stage 1) or the Stackformer's "
                    "architecture (stage 2; set vae= and data.tokens= when training), the loss weights, the "
                    "learning rate and the data batching. mvq's training configs know only mvq's key names; "
                    "`python train.py --base REFERENCE.yml` converts through this too.")
    parser.add_argument("config", metavar="REFERENCE_YAML", help="the reference release's config file")
    parser.add_argument("--out", required=True, metavar="YAML", help="the mvq config to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvq.convert.config import write_native_config
    from mvq.errors import UserError

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} exists; choose another --out or pass --overwrite to replace it")
    write_native_config(args.config, out)
    print(f"wrote {out}: train with `mvq train {out}`")
    return 0
