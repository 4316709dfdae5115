"""`mvq demo`: the whole pipeline on the built-in synthetic shapes (or your images), with a report."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="train, tokenize, sample and evaluate end to end on a CPU in minutes",
        description="Train the demo MQ-VAE and class-conditional Stackformer on the built-in synthetic shapes, "
                    "then write reconstructions, keep-mask overlays, score heat-maps, samples per class, loss "
                    "curves, metrics.json and index.html into the output folder. The folder must be new, empty "
                    "or made by an earlier demo (then only that demo's outputs are replaced); anything else is "
                    "refused, and nothing is written before the inputs are checked.")
    p.add_argument("--out", default="demo-output",
                   help="output folder: new, empty, or an earlier demo's (default: demo-output)")
    p.add_argument("--data", metavar="FOLDER",
                   help="use your own images (class subfolders make the Stackformer class-conditional)")
    p.add_argument("--fast", action="store_true", help="a short version (about 2 minutes)")
    p.add_argument("--seed", type=int, help="seed of both training runs and of sampling (default: the configs' own)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvq.demo import run_demo

    metrics = run_demo(args.out, data=args.data, fast=args.fast, seed=args.seed)
    print("\nmetrics:")
    for key in ["recon_psnr", "keep_focus_ratio", "class_consistency", "stage2_val_loss",
                "stage2_marginal_baseline_loss", "seconds_total"]:
        print(f"  {key:32s} {metrics[key]:.4g}")
    return 0
