"""`mvq train CONFIG [key=value ...]`: start or resume a training run."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an MQ-VAE (stage 1) or a Stackformer (stage 2)",
                              description="Train stage 1 or stage 2, chosen by the config. Dotted key=value "
                                          "overrides change any config value, e.g. model.keep_ratio=0.3 "
                                          "trainer.max_steps=50; they may come before, between or after "
                                          "the options.")
    p.add_argument("config", nargs="?", help="YAML config (configs/stage1/..., configs/stage2/..., configs/demo/...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (anywhere on the line)")
    p.add_argument("--run-dir", help="run folder (default: runs/<config>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its checkpoints/last.ckpt")
    p.add_argument("--data", metavar="PATH", help="train on the images under PATH instead of the config's dataset")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mvq.training.run import TrainingInterrupted, train

    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and args.resume:
        config, overrides = None, [config, *overrides]
    try:
        folder = train(config, overrides, run_dir=args.run_dir, resume=args.resume, data_path=args.data)
    except TrainingInterrupted as stop:
        print(stop)
        return stop.exit_code
    print(f"run folder: {folder}")
    return 0
