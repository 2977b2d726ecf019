"""Streaming engine: cached-state layers, chunked encoder/decoder with batch slots, latency presets."""

from xcodec_stream.streaming.decoder import StreamingDecoder
from xcodec_stream.streaming.encoder import StreamingEncoder
from xcodec_stream.streaming.presets import PRESETS, StreamingOptions

__all__ = ["PRESETS", "StreamingDecoder", "StreamingEncoder", "StreamingOptions"]
