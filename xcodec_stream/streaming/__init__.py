"""Streaming engine: cached-state layers, chunked encoder/decoder with batch slots, latency presets."""
