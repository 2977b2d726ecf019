"""The asyncio WebSocket daemon: thin I/O around Session (protocol), Worker (compute thread) and the HTTP router."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .config import ServerConfig
from .http import HttpReply, HttpRouter
from .protocol import CLOSE_INTERNAL, PROTOCOL_VERSION, ProtocolError, pack
from .rooms import RoomRegistry
from .sessions import CodecInfo, Session, error_close
from .worker import StepResult, Worker

log = logging.getLogger("xcodec_stream.server")

DRAIN_TIMEOUT_S = 2.0  # how long a closing session may take to send what is queued before the close frame


def codec_info(model: Any, model_id: str) -> CodecInfo:
    cfg = model.config
    bandwidths = tuple(float(b) for b in getattr(cfg, "target_bandwidths", ()) or ())
    return CodecInfo(
        model_id=model_id,
        sample_rate=int(cfg.sample_rate),
        frame_size=int(getattr(cfg, "hop_length", 320)),
        frame_rate=float(cfg.frame_rate),
        num_quantizers=int(cfg.num_quantizers),
        codebook_size=int(cfg.codebook_size),
        bandwidths=bandwidths,
    )


class XcodecServer:
    """`async with XcodecServer(model, config) as srv:` serves on `srv.url` until the block exits."""

    def __init__(
        self, model: Any, config: ServerConfig, *, model_id: str | None = None, device: str = ""
    ) -> None:
        self.model = model
        self.config = config
        self.device = device or str(getattr(model, "device", "cpu"))
        self.codec = codec_info(model, model_id or config.model)
        self.sessions: dict[int, Session] = {}
        self.rooms = RoomRegistry()
        self.router = HttpRouter()
        self.router.add("/healthz", self._healthz)
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws: Server | None = None
        self.worker: Worker | None = None
        self.port = 0
        self.started = time.monotonic()
        self.sessions_total = 0

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    async def __aenter__(self) -> XcodecServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self.worker = Worker(
            self.model,
            self._emit,
            capacity=cfg.capacity,
            max_step_ms=cfg.max_step_ms,
            max_chunks_per_step=cfg.max_chunks_per_step,
            batch_wait_ms=cfg.batch_wait_ms,
            zero_crossings=cfg.resampler_zero_crossings,
            preload=cfg.presets,
            torch_threads=cfg.torch_threads,
        )
        await self._loop.run_in_executor(
            None, self.worker.start
        )  # preloading engines must not block the loop
        self._ws = await serve(
            self._handler,
            cfg.host,
            cfg.port,
            compression=None,  # per-message deflate costs memory per connection and gains nothing on audio
            max_size=cfg.max_message_bytes,
            open_timeout=cfg.handshake_timeout_s,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s,
            process_request=self.router.process_request,
        )
        self.port = self._ws.sockets[0].getsockname()[1]
        self.started = time.monotonic()

    async def close(self) -> None:
        """Stop accepting, close every connection (error shutting_down, 1001), stop the worker. Idempotent."""
        if self._ws is not None:
            for session in list(self.sessions.values()):
                session.fail(ProtocolError("shutting_down", "the server is stopping"))
            for _ in range(int(DRAIN_TIMEOUT_S / 0.01)):  # the handlers drain and close with 1001
                if not self.sessions:
                    break
                await asyncio.sleep(0.01)
            self._ws.close()
            await self._ws.wait_closed()
            self._ws = None
        if self.worker is not None:
            worker, self.worker = self.worker, None
            await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    async def serve_forever(self) -> None:
        assert self._ws is not None, "call start() first"
        await self._ws.serve_forever()

    # ---------------------------------------------------------------- worker -> loop
    def _emit(self, results: list[tuple[int, StepResult]]) -> None:
        """Called in the worker thread once per tick."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop closing
                loop.call_soon_threadsafe(self._dispatch, results)

    def _dispatch(self, results: list[tuple[int, StepResult]]) -> None:
        for sid, result in results:
            session = self.sessions.get(sid)
            if session is not None:
                session.on_result(result)

    # ---------------------------------------------------------------- connections
    async def _handler(self, ws: ServerConnection) -> None:
        if len(self.sessions) >= self.config.max_sessions:
            frame, code, reason = error_close(
                ProtocolError("server_full", f"{self.config.max_sessions} sessions already; retry later")
            )
            with contextlib.suppress(ConnectionClosed):
                await ws.send(frame)
                await ws.close(code, reason)
            return
        if self.config.send_buffer_bytes:
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:  # a small kernel buffer makes the slow-reader policy act sooner
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.send_buffer_bytes)
        sid = next(self._ids)
        session = Session(
            sid,
            config=self.config,
            codec=self.codec,
            worker=self.worker,
            rooms=self.rooms,
            sessions=self.sessions,
        )
        self.sessions[sid] = session
        self.sessions_total += 1
        peer = ws.remote_address
        log.debug("session %d: connected from %s", sid, peer)
        reader = asyncio.create_task(self._read(ws, session))
        writer = asyncio.create_task(self._write(ws, session))
        closing = asyncio.create_task(session.closing.wait())
        try:
            await asyncio.wait({reader, closing}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and reader.exception() is not None:
                log.error("session %d: handler failed", sid, exc_info=reader.exception())
                session.fail(ProtocolError("internal", "server fault; see the server log"))
            if session.close_code is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DRAIN_TIMEOUT_S):
                        await session.out.join()
                        await asyncio.sleep(0)  # let the writer hand its last frame to the transport
                log.info("session %d: closing %d %s", sid, session.close_code, session.close_reason)
                with contextlib.suppress(ConnectionClosed):
                    await ws.close(session.close_code, session.close_reason)
        finally:
            for task in (reader, writer, closing):
                task.cancel()
            await asyncio.gather(reader, writer, closing, return_exceptions=True)
            session.close()
            self.sessions.pop(sid, None)
            log.debug("session %d: gone (%s)", sid, session.close_reason or "client closed")

    async def _read(self, ws: ServerConnection, session: Session) -> None:
        """Feed frames to the session. Once it is closing, keep reading (and dropping) frames: the peer's
        answer to our close frame must get through even if it had sent more."""
        cfg = self.config
        while True:
            if session.close_code is not None:
                timeout: float | None = None
            elif session.state in ("handshake", "opening"):
                timeout = cfg.handshake_timeout_s
            elif session.mode == "listen":
                timeout = None  # listeners only read; WebSocket pings find dead ones
            else:
                timeout = cfg.idle_timeout_s or None
            try:
                async with asyncio.timeout(timeout):
                    data = await ws.recv()
            except TimeoutError:
                if session.state in ("ready", "flushing") and session.busy:
                    continue  # the server still owes this session output: it is waiting on us, not idle
                what = "no hello" if session.state == "handshake" else "no message"
                session.fail(ProtocolError("idle_timeout", f"{what} within {timeout:g} s"))
                continue
            except ConnectionClosed:
                return
            if session.close_code is None:
                await session.handle(data)

    async def _write(self, ws: ServerConnection, session: Session) -> None:
        try:
            while True:
                msg = await session.out.get()
                await ws.send(pack(msg))
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("session %d: writer failed", session.sid)
            with contextlib.suppress(ConnectionClosed):
                await ws.close(CLOSE_INTERNAL, "internal")

    # ---------------------------------------------------------------- HTTP
    def health(self) -> dict:
        worker = self.worker
        return {
            "status": "ok" if worker is not None else "stopping",
            "protocol_version": PROTOCOL_VERSION,
            "model": self.codec.model_id,
            "device": self.device,
            "sessions": len(self.sessions),
            "max_sessions": self.config.max_sessions,
            "sessions_total": self.sessions_total,
            "rooms": self.rooms.summary(),
            "presets_loaded": worker.presets_loaded if worker else [],
            # for clients' selectors (the web page): what `hello` may ask for
            "bandwidths": list(self.codec.bandwidths),
            "latency_presets": list(self.config.allowed_presets),
            "default_latency": self.config.default_latency,
            "worker": {
                "ticks": worker.ticks if worker else 0,
                "last_tick_ms": round(worker.last_tick_ms, 3) if worker else 0.0,
                "max_tick_ms": round(worker.max_tick_ms, 3) if worker else 0.0,
            },
            "uptime_s": round(time.monotonic() - self.started, 3),
        }

    def _healthz(self, request: object) -> HttpReply:
        return HttpReply.json(self.health())
