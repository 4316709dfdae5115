"""`mvq export RUN_DIR OUT_DIR [key=value ...]`: a trained run → a pretrained folder."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a run's model as a pretrained folder",
                              description="Write the model of a training run as a pretrained folder (config.json, "
                                          "model.safetensors and, for a Stackformer, tokenizer.json). The folder "
                                          "is written as a whole or not at all.")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="changes to the run's saved config, e.g. vae=NEW_PATH when the MQ-VAE folder moved")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty OUT_DIR as a whole: everything in it goes, once the new folder is "
                        "complete (until then it is untouched)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvq.training.run import export

    out = export(args.run_dir, args.out_dir, args.checkpoint, overrides=list(args.overrides),
                 overwrite=args.overwrite)
    print(f"wrote {out}")
    return 0
