"""xcodec-stream: X-Codec offline model, streaming engine, WebSocket daemon and clients."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xcodec_stream.model.config import XcodecConfig
    from xcodec_stream.model.feature_extraction import XcodecFeatureExtractor
    from xcodec_stream.model.xcodec import XcodecModel

__all__ = ["XcodecConfig", "XcodecFeatureExtractor", "XcodecModel"]
__version__ = "0.1.0"

# Imported on first use, so that `import xcodec_stream.clients` (a client) does not load torch.
_LAZY = {
    "XcodecConfig": "xcodec_stream.model.config",
    "XcodecFeatureExtractor": "xcodec_stream.model.feature_extraction",
    "XcodecModel": "xcodec_stream.model.xcodec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xcodec_stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
