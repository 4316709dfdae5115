"""The `mvq` command: one entry point, one sub-command per job.

Each sub-command lives in `mvq.commands.<name>` with `register(subparsers)` (argparse only,
imports nothing heavy) and a `run(args)` that does the work.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mvq.errors import UserError

COMMANDS = ["train", "export", "tokenize", "reconstruct", "sample", "eval", "demo", "convert_original"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvq", description="Masked vector quantization (MQ-VAE + Stackformer) for image generation.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"mvq.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mvq.commands.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        raise SystemExit(2)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        raise SystemExit(130)
    except (UserError, FileNotFoundError, ValueError) as exc:
        # Bad input the user can fix: one clear line, no traceback.
        print(f"mvq {args.command}: error: {exc}", file=sys.stderr)
        raise SystemExit(1)
    if isinstance(result, int):
        raise SystemExit(result)


if __name__ == "__main__":
    main()
