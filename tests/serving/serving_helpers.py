"""Helpers shared by the serving and client tests: the test clips and an in-process daemon on port 0."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import soundfile as sf

from xcodec_stream.serving.config import load_config
from xcodec_stream.serving.server import XcodecServer

DATA = Path(__file__).resolve().parents[1] / "data"


def speech(name: str = "arctic_a0009.wav", seconds: float | None = None) -> np.ndarray:
    x, rate = sf.read(DATA / name, dtype="float32")
    assert rate == 16000
    return x if seconds is None else x[: int(seconds * rate)]


@contextlib.asynccontextmanager
async def running_server(model, **overrides):
    """An XcodecServer on 127.0.0.1, port 0, with test-sized limits; `overrides` are config options."""
    defaults = {
        "port": 0,
        "max_sessions": 12,
        "idle_timeout_s": 20.0,
        "presets": ("balanced",),
        "model": "test-model",
    }
    config = load_config(None, {**defaults, **overrides})
    server = XcodecServer(model, config)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
