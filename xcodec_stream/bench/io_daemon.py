"""The daemon of `xcodec-stream bench io`, in a process of its own: the real server with the fake codec.

`python -m xcodec_stream.bench.io_daemon '{"port": 8765, "max_sessions": 1000}'`: the argument is a JSON
object of config options (the names of ServerConfig). Everything but the codec is what `serve` runs: the
event loop, sessions, flow control and the batching worker thread; SIGTERM drains and exits.
"""

from __future__ import annotations

import asyncio
import json
import sys

import torch

from xcodec_stream.cli.serve import serve
from xcodec_stream.serving.config import load_config
from xcodec_stream.serving.fake_codec import FakeModel
from xcodec_stream.serving.logs import setup_logging

MODEL_ID = "fake (no-op codec)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = load_config(None, json.loads(argv[0]) if argv else {})
    setup_logging(config.log_level, config.log_format, sys.stderr)
    torch.set_num_threads(1)  # nothing to compute: keep torch's pools from taking cores
    asyncio.run(serve(FakeModel(), config, MODEL_ID, "cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
