"""The `xcodec-stream` entry point: one argparse parser, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules under xcodec_stream.cli, in help order; each defines add_parser(subparsers), which registers its
# subcommand and sets `func` to its run(args) -> int.
SUBCOMMANDS = ("encode", "decode", "serve", "client", "evaluate", "bench", "train", "corpus")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xcodec-stream",
        description="Streaming X-Codec audio codec: offline encode/decode, a WebSocket daemon and its clients.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        importlib.import_module(f"xcodec_stream.cli.{module}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        print(f"xcodec-stream {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
