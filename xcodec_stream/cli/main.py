"""The `xcodec-stream` entry point: one argparse parser, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module under xcodec_stream.cli; each module defines add_parser(subparsers) and run(args) -> int.
# Imported lazily so that `xcodec-stream --help` does not pay for torch.
SUBCOMMANDS = {
    "encode": "encode",
    "decode": "decode",
    "serve": "serve",
    "client": "client",
    "eval": "evaluate",
    "bench": "bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xcodec-stream",
        description="Streaming X-Codec audio codec: offline encode/decode, a WebSocket daemon and its clients.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(f"xcodec_stream.cli.{module}")
        except ModuleNotFoundError as exc:  # a subcommand still being built must not break the others
            if exc.name != f"xcodec_stream.cli.{module}":
                raise
            continue
        mod.add_parser(sub)
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
