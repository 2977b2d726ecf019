"""The `xcodec-stream` entry point: one argparse parser, one module per subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand -> its module under xcodec_stream.cli, in help order; each module defines add_parser(subparsers),
# which registers the subcommand and sets `func` to its run(args) -> int. add_parser imports what it needs
# before registering anything, so that a missing server extra leaves nothing half-registered for the stub
# (registered under the subcommand's name) to collide with.
SUBCOMMANDS = {
    "encode": "encode",
    "decode": "decode",
    "serve": "serve",
    "client": "client",
    "eval": "evaluate",
    "bench": "bench",
    "train": "train",
    "corpus": "corpus",
}

# Import names of the packages of the `server` extra (pyproject.toml; a test keeps the two in step). The base
# install is the client; a subcommand that needs one of these says which extra to install.
SERVER_EXTRA_MODULES = frozenset(
    {"torch", "torchaudio", "safetensors", "huggingface_hub", "tqdm", "prometheus_client", "redis"}
)
SERVER_EXTRA_HINT = "pip install 'xcodec-stream[server]'"


def missing_server_package(exc: ModuleNotFoundError) -> str | None:
    """The server-extra package that `exc` is about, or None (then it is some other fault: not ours to hide)."""
    top = (exc.name or "").split(".")[0]
    return top if top in SERVER_EXTRA_MODULES else None


def _needs_server(command: str, package: str) -> str:
    return f"xcodec-stream {command} needs the server extra: {SERVER_EXTRA_HINT} (missing: {package})"


def _add_stub(sub: argparse._SubParsersAction, command: str, package: str) -> None:
    """A subcommand whose module cannot be imported without the server extra: listed, and says so when run."""
    message = _needs_server(command, package)
    p = sub.add_parser(command, help=f"(needs the server extra: {SERVER_EXTRA_HINT})", description=message)
    p.set_defaults(func=None, stub_message=message)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xcodec-stream",
        description="Streaming X-Codec audio codec: offline encode/decode, a WebSocket daemon and its clients.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command, module in SUBCOMMANDS.items():
        try:
            importlib.import_module(f"xcodec_stream.cli.{module}").add_parser(sub)
        except ModuleNotFoundError as exc:
            package = missing_server_package(exc)
            if package is None:
                raise
            _add_stub(sub, command, package)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # parse_known_args: a stub takes whatever arguments its real subcommand would have, then explains
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "stub_message", None):
        print(args.stub_message, file=sys.stderr)
        return 1
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        # a subcommand that imports the server extra only when it runs (serve, bench, train, ...)
        package = missing_server_package(exc)
        if package is None:
            raise
        print(_needs_server(args.command, package), file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as exc:
        print(f"xcodec-stream {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
