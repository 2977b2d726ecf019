"""`xcodec-stream bench {offline,stream,batch,serve-load,cluster,io}`: benchmarks that print a table and update docs/BENCHMARKS.md
(cluster: docs/DEPLOY.md)."""

from __future__ import annotations

import argparse
import importlib

# subcommand -> module under xcodec_stream.bench; each defines add_arguments(parser) and run(args) -> int.
BENCHES = {
    "offline": "offline",
    "stream": "stream",
    "batch": "batch",
    "serve-load": "serve_load",
    "cluster": "cluster",
    "io": "io_ceiling",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    # import first: without the server extra this raises before "bench" is registered (main stubs it then)
    mods = {
        name: importlib.import_module(f"xcodec_stream.bench.{module}") for name, module in BENCHES.items()
    }
    p = sub.add_parser("bench", help="run a benchmark; prints a table and writes docs/BENCHMARKS.md")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, mod in mods.items():
        bp = bsub.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
        mod.add_arguments(bp)
        bp.set_defaults(func=mod.run)
