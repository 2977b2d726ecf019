"""xcodec-stream: X-Codec offline model, streaming engine, WebSocket daemon and clients."""

from xcodec_stream.model.config import XcodecConfig
from xcodec_stream.model.feature_extraction import XcodecFeatureExtractor
from xcodec_stream.model.xcodec import XcodecModel

__all__ = ["XcodecConfig", "XcodecFeatureExtractor", "XcodecModel"]
__version__ = "0.1.0"
