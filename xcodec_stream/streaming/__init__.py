"""Streaming engine: static-shape cached-state layers, chunked encoder/decoder with batch slots, presets.

Imports are lazy: `import xcodec_stream.streaming.layers` does not build the engines' modules.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StreamingDecoder": "xcodec_stream.streaming.decoder",
    "StreamingEncoder": "xcodec_stream.streaming.encoder",
    "PRESETS": "xcodec_stream.streaming.presets",
    "StreamingOptions": "xcodec_stream.streaming.presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
