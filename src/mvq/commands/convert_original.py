"""`mvq convert-original CKPT --config YAML --out DIR`: a reference-release or taming VQGAN checkpoint → a pretrained folder."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-original", help="convert a checkpoint of the reference implementation or of taming's VQGAN",
        description="Convert a Lightning checkpoint of the reference implementation (MQ-VAE or Stackformer, "
                    "told apart by its YAML config) or of taming-transformers' VQGAN (its YAML has "
                    "model.params.ddconfig; its keys quantize.embedding.weight and post_quant_conv.*) into an "
                    "mvq pretrained folder. For an MQ-VAE or a VQGAN the discriminator weights are written too "
                    "(discriminator.safetensors), so stage-1 training can continue from it with "
                    "run.init_from=DIR; an MQ-VAE run can also start its encoder from a converted VQGAN. The "
                    "checkpoint is read without running code stored in it: objects other than tensors and plain "
                    "data are skipped, and a file that asks to call a function is refused. The folder is written "
                    "as a whole or not at all.")
    p.add_argument("checkpoint", help="reference or taming .ckpt (or a file holding a plain state dict)")
    p.add_argument("--config", required=True, help="the YAML config of that checkpoint (reference or taming)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty output folder as a whole: everything in it goes, once the new folder "
                        "is complete (until then it is untouched)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvq.convert.checkpoint import convert_checkpoint

    print(convert_checkpoint(args.checkpoint, args.config, args.out, overwrite=args.overwrite))
    return 0
