"""`mvq export RUN_DIR OUT_DIR`: a trained run → a pretrained folder."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a run's model as a pretrained folder")
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--checkpoint", choices=["last", "best"], default="last")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvq.training.run import export

    out = export(args.run_dir, args.out_dir, args.checkpoint)
    print(f"wrote {out}")
    return 0
