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
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a checkpoint that holds Python objects besides tensors to be fully unpickled "
                        "(this can run code stored in the file: only for files from a source you trust)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvq.convert.checkpoint import convert_checkpoint

    print(convert_checkpoint(args.checkpoint, args.config, args.out, trust_checkpoint=args.trust_checkpoint))
    return 0
