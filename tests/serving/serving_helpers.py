"""Helpers shared by the serving and client tests: the test clips, an in-process daemon on port 0, raw frames."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgpack
import numpy as np
import soundfile as sf
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from xcodec_stream.serving.arrays import pack_array
from xcodec_stream.serving.config import load_config
from xcodec_stream.serving.server import XcodecServer
from xcodec_stream.serving.session_core import CodecInfo
from xcodec_stream.serving.worker import EngineInfo

DATA = Path(__file__).resolve().parents[1] / "data"

# What a session is told about the codec and its engines, for the session tests that run without a model.
CODEC = CodecInfo("test-model", 16000, 320, 50.0, 4, 1024, (0.5, 1.0, 2.0))
INFO = EngineInfo(
    n_q=4,
    latency_ms=60.0,
    encoder_latency_ms=60.0,
    decoder_latency_ms=40.0,
    lookahead_frames=2,
    frame_size=320,
)


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


def frame(**msg) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


HELLO = frame(type="hello", version=1, mode="loopback")


def audio(seq: int, pcm: np.ndarray | dict) -> bytes:
    return frame(type="audio", seq=seq, pcm=pcm if isinstance(pcm, dict) else pack_array(pcm))


class Raw:
    """A hand-driven connection: sends any bytes, reads decoded server maps."""

    def __init__(self, ws) -> None:
        self.ws = ws

    async def send(self, data: bytes | str) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = 5.0) -> dict:
        async with asyncio.timeout(timeout):
            return msgpack.unpackb(await self.ws.recv(), raw=False)

    async def until(self, kind: str, timeout: float = 5.0) -> dict:
        while True:
            msg = await self.recv(timeout)
            if msg["type"] == kind:
                return msg

    async def closed(self) -> int | None:
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(5):
                while True:
                    await self.ws.recv()
        return self.ws.close_code


@contextlib.asynccontextmanager
async def raw(url: str, hello: bytes | None = HELLO, **kw):
    async with connect(url, compression=None, max_size=None, **kw) as ws:
        r = Raw(ws)
        if hello is not None:
            await r.send(hello)
            assert (await r.recv())["type"] == "ready"
        yield r
