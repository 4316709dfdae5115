"""The `mvq` command: one entry point, one sub-command per job.

Each sub-command lives in `mvq.commands.<name>` with `register(subparsers)` (argparse only,
imports nothing heavy) and a `run(args)` that does the work. A command that declares an
`overrides` positional takes `key=value` overrides anywhere on its command line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mvq.errors import UserError

COMMANDS = ["train", "export", "tokenize", "reconstruct", "sample", "complete", "eval", "demo", "convert_original", "convert_config",
            "shards", "app", "weights"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvq", description="Masked vector quantization (MQ-VAE + Stackformer) for image generation.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mvq.commands.{name}").register(subparsers)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse `argv`; `key=value` items after options join the command's overrides (argparse stops at options)."""
    args, extra = parser.parse_known_args(argv)
    late = [item for item in extra if "=" in item and not item.startswith("-")]
    if late and isinstance(getattr(args, "overrides", None), list):
        args.overrides += late
        extra = [item for item in extra if item not in late]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        raise SystemExit(2)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        raise SystemExit(130)
    except UserError as exc:  # bad input the user can fix: one clear line, no traceback; anything else is a bug
        print(f"mvq {args.command}: error: {exc}", file=sys.stderr)
        raise SystemExit(1)
    if isinstance(result, int):
        raise SystemExit(result)


if __name__ == "__main__":
    main()
