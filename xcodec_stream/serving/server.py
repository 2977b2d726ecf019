"""The asyncio WebSocket daemon: connections (admission, auth, resume, drain on shutdown) around Session (protocol),
Worker (compute thread) and the HTTP router (/healthz, /metrics, the web page)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..streaming.engine import CodecModel
from .auth import TokenAuth, unauthorized
from .config import ServerConfig
from .http import HttpReply, HttpRouter, respond
from .logs import RedactSecrets
from .metrics import Metrics
from .modes import Mode
from .protocol import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    PROTOCOL_VERSION,
    Hello,
    ProtocolError,
    pack,
    parse_client_message,
)
from .resume import ResumeRegistry
from .rooms import RoomRegistry
from .session_core import CodecInfo
from .sessions import Session, error_close
from .tls import server_context
from .worker import StepResult, Worker, percentile_ms
from .worker.pool import EnginePool

log = logging.getLogger("xcodec_stream.server")
WS_LOG = "xcodec_stream.ws"  # the websockets library's records (handshakes, pings), secrets redacted

# Set by the nginx configuration of configs/cluster/: a full daemon answers 503 so that nginx tries another.
BALANCER_HEADER = "X-Xcodec-Balancer"
DRAIN_TIMEOUT_S = 2.0  # how long a closing session may take to send what is queued before the close frame


def codec_info(model: CodecModel, model_id: str) -> CodecInfo:
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


def _resume_hello(data: bytes | str) -> Hello | None:
    """The first frame of a connection, if it is a valid resume (anything else goes to a new Session)."""
    try:
        msg = parse_client_message(data)
    except ProtocolError:
        return None
    return msg if isinstance(msg, Hello) and msg.resume is not None else None


class _Link:
    """One connection serving a session; a resume moves the session to a new link and kicks the old one."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.pump: asyncio.Task | None = None
        self.kicked = False


class XcodecServer:
    """`async with XcodecServer(model, config) as srv:` serves on `srv.url` until the block exits."""

    def __init__(
        self, model: CodecModel, config: ServerConfig, *, model_id: str | None = None, device: str = ""
    ) -> None:
        self.model = model
        self.config = config
        self.device = device or str(getattr(model, "device", "cpu"))
        self.codec = codec_info(model, model_id or config.model)
        self.sessions: dict[int, Session] = {}  # every session: connected, resumable (detached), opening
        self.rooms: RoomRegistry = RoomRegistry()  # a ClusterRooms from start() with [cluster] redis
        self.cluster = None  # serving.cluster.directory.Directory in a cluster
        self.result_sinks: dict[
            int, Callable[[StepResult], None]
        ] = {}  # worker streams that are not sessions
        self.metrics = Metrics(lambda: list(self.sessions.values()))
        self.auth = TokenAuth(config.auth_tokens)
        self.resumes = ResumeRegistry(config.resume_grace_s, self._end)
        self.router = HttpRouter()
        self.router.add("/healthz", self._healthz)
        if config.metrics_enabled:
            self.router.add("/metrics", self._metrics)
        self._ids = itertools.count(1)
        self._links: dict[int, _Link] = {}
        self._handshaking = 0  # connections admitted, first message not yet read
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws: Server | None = None
        self.worker: Worker | EnginePool | None = None
        self.port = 0
        self.started = time.monotonic()
        self.sessions_total = 0
        self.stopping = False

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.tls_cert else "ws"
        return f"{scheme}://{self.config.host}:{self.port}"

    async def __aenter__(self) -> XcodecServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        ssl = server_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert else None
        kwargs = dict(
            capacity=cfg.capacity,
            max_step_ms=cfg.max_step_ms,
            max_chunks_per_step=cfg.max_chunks_per_step,
            batch_wait_ms=cfg.batch_wait_ms,
            zero_crossings=cfg.resampler_zero_crossings,
            preload=cfg.presets,
            torch_threads=cfg.torch_threads,
            compile=cfg.compile,
            observe=self.metrics.observe_step,
        )
        if cfg.engine_processes:
            self.worker = EnginePool(
                self.model,
                self._emit,
                processes=cfg.engine_processes,
                log_level=cfg.log_level,
                log_format=cfg.log_format,
                **kwargs,
            )
        else:
            self.worker = Worker(self.model, self._emit, **kwargs)
        await self._loop.run_in_executor(
            None, self.worker.start
        )  # preloading engines must not block the loop
        ws_log = logging.getLogger(WS_LOG)
        if not any(isinstance(f, RedactSecrets) for f in ws_log.filters):
            ws_log.addFilter(RedactSecrets())  # websockets logs request lines and headers at debug level
        self._ws = await serve(
            self._handler,
            cfg.host,
            cfg.port,
            ssl=ssl,
            compression=None,  # per-message deflate costs memory per connection and gains nothing on audio
            max_size=cfg.max_message_bytes,
            open_timeout=cfg.handshake_timeout_s,
            ping_interval=cfg.ping_interval_s,
            ping_timeout=cfg.ping_timeout_s,
            # browsers send Origin and must match; other clients send none (None admits them)
            origins=[*cfg.allowed_origins, None] if cfg.allowed_origins else None,
            process_request=self._process_request,
            logger=ws_log,
        )
        self.port = self._ws.sockets[0].getsockname()[1]
        self.started = time.monotonic()
        if cfg.clustered:
            await self._join_cluster()

    async def _join_cluster(self) -> None:
        """[cluster] redis: rooms span the daemons sharing that Redis (imported here: `redis` is needed only
        in a cluster)."""
        from .cluster.directory import Directory
        from .cluster.rooms import ClusterRooms

        cfg = self.config
        node = cfg.cluster_node or f"{socket.gethostname()}-{self.port}"
        url = cfg.cluster_url
        if not url:
            host = socket.gethostname() if cfg.host in ("0.0.0.0", "::", "") else cfg.host
            url = f"{'wss' if cfg.tls_cert else 'ws'}://{host}:{self.port}"
        self.cluster = Directory(
            cfg.cluster_redis,
            node=node,
            public_url=url,
            load=self._load,
            prefix=cfg.cluster_prefix,
            ttl_s=cfg.cluster_ttl_s,
        )
        self.rooms = ClusterRooms(
            self.cluster,
            worker=lambda: self.worker,
            new_id=lambda: next(self._ids),
            sinks=self.result_sinks,
            stream_len=cfg.cluster_stream_len,
        )
        await self.cluster.start()

    def _load(self) -> dict:
        """This daemon's figures in its cluster record (admission elsewhere reads `free`)."""
        sessions = len(self.sessions) + self._handshaking
        return {
            "sessions": sessions,
            "detached": self.resumes.detached,
            "max_sessions": self.config.max_sessions,
            "free": 0 if self.stopping else max(0, self.config.max_sessions - sessions),
            "rooms": self.rooms.cluster_rooms() if self.cluster is not None else {},
        }

    async def close(self) -> None:
        """Stop accepting; flush every open session (its client gets the remaining output and `done`), then
        close each with `shutting_down` / 1001; end sessions waiting for a resume; stop the worker. Bounded by
        drain_timeout_s (+ DRAIN_TIMEOUT_S for the sockets). Idempotent."""
        if self._ws is not None and not self.stopping:
            self.stopping = True
            self._ws.server.close()  # the listening socket: new connections are refused from now on
            for session in self.resumes.close():
                self._end(session)  # detached: nobody to deliver to
            for session in list(self.sessions.values()):
                session.begin_shutdown()
            await self.rooms.shutdown()
            await self._until(
                lambda: all(s.drained for s in self.sessions.values()), self.config.drain_timeout_s
            )
            for session in list(self.sessions.values()):
                if session.close_code is None:
                    session.fail(ProtocolError("shutting_down", "the server is stopping"))
            await self._until(lambda: not self.sessions, DRAIN_TIMEOUT_S + 1.0)
            self._ws.close()  # anything left (connections still in their handshake): 1001
            await self._ws.wait_closed()
            self._ws = None
            if self.cluster is not None:
                await self.rooms.close()
        if self.worker is not None:
            worker, self.worker = self.worker, None
            await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    @staticmethod
    async def _until(done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

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
            else:
                sink = self.result_sinks.get(sid)
                if sink is not None:
                    sink(result)

    # ---------------------------------------------------------------- connections
    def _full(self) -> bool:
        return len(self.sessions) + self._handshaking >= self.config.max_sessions

    async def _reject(self, ws: ServerConnection, err: ProtocolError) -> None:
        """Error message and close, for a connection without a session (or one that lost it)."""
        self.metrics.error(err.code)
        frame, code, reason = error_close(err)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(frame)
            await ws.close(code, reason)

    def _server_full(self) -> ProtocolError:
        text = f"{self.config.max_sessions} sessions already; retry later"
        hint = self.cluster.hint() if self.cluster is not None else None
        if hint is None:
            return ProtocolError("server_full", text)
        text += f" or connect to daemon {hint['node']} ({hint['url']}, {hint['free']} free)"
        return ProtocolError("server_full", text, extra={"hint": hint})

    async def _handler(self, ws: ServerConnection) -> None:
        if self.stopping:
            await self._reject(ws, ProtocolError("shutting_down", "the server is stopping"))
            return
        # Full: refuse at once, unless a dropped session may be coming back (its resume needs no new slot).
        if self._full() and not self.resumes.detached:
            await self._reject(ws, self._server_full())
            return
        self._handshaking += 1
        try:
            first = await self._first_frame(ws)
        finally:
            self._handshaking -= 1
        if first is None:
            return
        hello = _resume_hello(first)
        if hello is not None:
            await self._resume(ws, hello)
            return
        if self.stopping or self._full():
            stopping = ProtocolError("shutting_down", "the server is stopping")
            await self._reject(ws, stopping if self.stopping else self._server_full())
            return
        session = self._new_session()
        if self.config.send_buffer_bytes:
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:  # a small kernel buffer makes the slow-reader policy act sooner
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.send_buffer_bytes)
        session.log.debug("connected from %s", ws.remote_address)
        await session.handle(first)
        await self._serve(ws, session)

    async def _first_frame(self, ws: ServerConnection) -> bytes | str | None:
        timeout = self.config.handshake_timeout_s
        try:
            async with asyncio.timeout(timeout):
                data = await ws.recv()
        except TimeoutError:
            await self._reject(ws, ProtocolError("idle_timeout", f"no hello within {timeout:g} s"))
            return None
        except ConnectionClosed:
            return None
        self.metrics.bytes_in.inc(len(data))
        return data

    def _new_session(self) -> Session:
        sid = next(self._ids)
        session = Session(
            sid,
            config=self.config,
            codec=self.codec,
            worker=self.worker,
            rooms=self.rooms,
            sessions=self.sessions,
            metrics=self.metrics,
        )
        if self.config.resume_enabled:
            session.token = self.resumes.issue(session)
        self.sessions[sid] = session
        self.sessions_total += 1
        return session

    async def _resume(self, ws: ServerConnection, hello: Hello) -> None:
        session = self.resumes.find(hello.resume) if self.config.resume_enabled else None
        if session is None or session.state == "closed" or self.stopping:
            await self._reject(ws, ProtocolError("resume_failed", "unknown or expired resume token"))
            return
        try:
            session.check_resume(hello)
        except ProtocolError as err:
            await self._reject(ws, err)
            return
        old = self._links.get(session.sid)
        if old is not None:  # the old connection is not known to be dead yet (e.g. a half-open TCP)
            await self._kick(old)
        self.resumes.claim(session.token)
        session.out.put_front(session.resume_front(hello))
        self.metrics.resumes.inc()
        session.log.info("resumed from %s", ws.remote_address)
        await self._serve(ws, session)

    async def _kick(self, link: _Link) -> None:
        link.kicked = True
        if link.pump is not None:
            link.pump.cancel()
            await asyncio.wait({link.pump})  # its writer has stopped: nothing more goes to the old socket

    async def _serve(self, ws: ServerConnection, session: Session) -> None:
        """Pump the session over this connection; afterwards end the session, or keep it for a resume."""
        link = _Link(ws)
        self._links[session.sid] = link
        session.attached = True
        link.pump = asyncio.create_task(self._pump(ws, session))
        try:
            await asyncio.wait({link.pump})
        except asyncio.CancelledError:  # the handler itself is cancelled: nothing will come back for it
            link.pump.cancel()
            self._end(session)
            raise
        if link.kicked:
            await self._reject(ws, ProtocolError("resumed_elsewhere", "this session was resumed elsewhere"))
            return
        self._links.pop(session.sid, None)
        if session.close_code is None and self._resumable(session, ws):
            session.attached = False
            self.resumes.detach(session.token)
            session.log.info(
                "connection lost (close %s): kept %g s for a resume",
                ws.close_code,
                self.config.resume_grace_s,
            )
            return
        self._end(session)

    def _resumable(self, session: Session, ws: ServerConnection) -> bool:
        """A session whose connection ended without a normal close from its client is kept for a resume."""
        return (
            session.token is not None
            and session.state in ("ready", "flushing", "done")
            and not self.stopping
            and ws.close_code != CLOSE_NORMAL
        )

    def _end(self, session: Session) -> None:
        if not session.attached:
            session.log.info("not resumed: closed")
        session.close()
        self.sessions.pop(session.sid, None)
        self._links.pop(session.sid, None)
        self.resumes.forget(session.token)
        session.log.debug("gone (%s)", session.close_reason or "client closed")

    async def _pump(self, ws: ServerConnection, session: Session) -> None:
        reader = asyncio.create_task(self._read(ws, session))
        writer = asyncio.create_task(self._write(ws, session))
        closing = asyncio.create_task(session.closing.wait())
        try:
            await asyncio.wait({reader, closing}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                session.log.error("handler failed", exc_info=reader.exception())
                session.fail(ProtocolError("internal", "server fault; see the server log"))
            if session.close_code is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(DRAIN_TIMEOUT_S):
                        await session.out.join()
                        await asyncio.sleep(0)  # let the writer hand its last frame to the transport
                session.log.info("closing %d %s", session.close_code, session.close_reason)
                with contextlib.suppress(ConnectionClosed):
                    await ws.close(session.close_code, session.close_reason)
        finally:
            for task in (reader, writer, closing):
                task.cancel()
            await asyncio.gather(reader, writer, closing, return_exceptions=True)

    async def _read(self, ws: ServerConnection, session: Session) -> None:
        """Feed frames to the session. Once it is closing, keep reading (and dropping) frames: the peer's
        answer to our close frame must get through even if it had sent more."""
        cfg = self.config
        while True:
            if session.close_code is not None:
                timeout: float | None = None
            elif session.state in ("handshake", "opening"):
                timeout = cfg.handshake_timeout_s
            elif session.mode == Mode.LISTEN:
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
            self.metrics.bytes_in.inc(len(data))
            if session.close_code is None:
                await session.handle(data)

    async def _write(self, ws: ServerConnection, session: Session) -> None:
        try:
            while True:
                msg = await session.out.get()
                session.sending(msg)  # before the send: a message lost with the connection can be replayed
                frame = pack(msg)
                await ws.send(frame)
                self.metrics.bytes_out.inc(len(frame))
        except ConnectionClosed:
            pass
        except Exception:
            session.log.exception("writer failed")
            with contextlib.suppress(ConnectionClosed):
                await ws.close(CLOSE_INTERNAL, "internal")

    # ---------------------------------------------------------------- HTTP
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Tokens guard the WebSocket upgrade and /metrics (unless [metrics] public); the rest is the router's."""
        upgrade = "websocket" in request.headers.get("Upgrade", "").lower()
        guarded = upgrade or (urlsplit(request.path).path == "/metrics" and not self.config.metrics_public)
        if guarded and not self.auth.check(request):
            self.metrics.error("unauthorized")
            what = "WebSocket handshake" if upgrade else "GET /metrics"
            log.warning("unauthorized %s from %s (missing or wrong token)", what, connection.remote_address)
            return unauthorized(connection)
        if upgrade and self._send_elsewhere(request):
            # Behind the balancer a full daemon refuses the upgrade itself when another one has room: nginx
            # then tries the next daemon (proxy_next_upstream http_503); an open WebSocket could not be moved.
            # With no room anywhere the upgrade goes on and the client gets server_full (1013) as usual.
            err = self._server_full()
            self.metrics.error(err.code)
            body = {"error": err.code, "message": err.message, **err.extra}
            return respond(
                connection,
                HttpReply(503, HttpReply.json(body).body, "application/json", {"Retry-After": "1"}),
            )
        return await self.router.process_request(connection, request)

    def _send_elsewhere(self, request: Request) -> bool:
        return (
            self.cluster is not None
            and BALANCER_HEADER in request.headers
            and self._full()
            and not self.resumes.detached  # a resume needs no new slot: let it in
            and self.cluster.hint() is not None
        )

    def health(self) -> dict:
        worker = self.worker
        return {
            "status": (
                "stopping" if worker is None or self.stopping else "engine_down" if worker.dead else "ok"
            ),
            # the engine processes' ids ([worker] processes), none when the worker is a thread of the daemon
            "engine_pids": worker.pids if worker else [],
            "protocol_version": PROTOCOL_VERSION,
            "model": self.codec.model_id,
            "device": self.device,
            "sessions": len(self.sessions),
            "sessions_detached": self.resumes.detached,
            "max_sessions": self.config.max_sessions,
            "sessions_total": self.sessions_total,
            "rooms": self.rooms.summary(),
            "presets_loaded": worker.presets_loaded if worker else [],
            # for clients' selectors (the web page): what `hello` may ask for
            "bandwidths": list(self.codec.bandwidths),
            "latency_presets": list(self.config.allowed_presets),
            "default_latency": self.config.default_latency,
            "auth": self.auth.enabled,
            "resume_grace_s": self.config.resume_grace_s,
            "worker": {
                "ticks": worker.ticks if worker else 0,
                "last_tick_ms": round(worker.last_tick_ms, 3) if worker else 0.0,
                "max_tick_ms": round(worker.max_tick_ms, 3) if worker else 0.0,
                # the server's own time per tick (outside the codec's step/flush), over the last ticks
                "overhead_p50_ms": percentile_ms(worker.overhead_ms, 50) if worker else 0.0,
                "overhead_p99_ms": percentile_ms(worker.overhead_ms, 99) if worker else 0.0,
                "engine_restarts": worker.restarts if worker else 0,
            },
            "uptime_s": round(time.monotonic() - self.started, 3),
            **({"cluster": self.cluster.view()} if self.cluster is not None else {}),
        }

    def _healthz(self, request: object) -> HttpReply:
        health = self.health()
        # a balancer's health check takes a daemon whose engine process died out of the pool
        return HttpReply.json(health, 503 if health["status"] == "engine_down" else 200)

    def _metrics(self, request: object) -> HttpReply:
        return HttpReply(200, self.metrics.render(), Metrics.content_type)
