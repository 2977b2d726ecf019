"""asyncio client library for the daemon: connect/hello, send audio or codes, receive, and stream a whole signal."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..serving.protocol import PROTOCOL_VERSION, float_to_pcm, pack, pcm_to_float, unpack_server_message
from .latency import LatencyTracker

DEFAULT_URL = "ws://127.0.0.1:8765"


def with_node(url: str, node: str) -> str:
    """The URL with `?node=NAME`: the balancer of docs/DEPLOY.md routes it to that daemon."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "node"] + [("node", node)]
    return urlunsplit(parts._replace(query=urlencode(query)))


class ServerError(RuntimeError):
    """An `error` message from the server (or the connection closing with one)."""

    def __init__(self, code: str, message: str, fatal: bool = True, close_code: int | None = None) -> None:
        super().__init__(f"server error {code}: {message}" + (f" (close {close_code})" if close_code else ""))
        self.code, self.message, self.fatal, self.close_code = code, message, fatal, close_code


class Client:
    """One session. `await Client.connect(url, mode=...)` performs the handshake; `ready` holds the answer.

    With `resume=True` (and a server that keeps sessions: `ready.resume_token`), a dropped connection is
    re-established within the server's grace period and the session goes on: input the server had not
    received is sent again (chunks are kept until consumed), output resumes exactly where it stopped.
    Received output is acknowledged (`ack`) every `ack_interval_ms` so the server can let it go.
    """

    def __init__(
        self,
        ws: ClientConnection,
        ready: dict,
        fmt: str,
        *,
        reconnect: Callable[[], Awaitable[ClientConnection]] | None = None,
        resume: bool = False,
        ack_interval_ms: float = 100.0,
        name: str | None = None,
    ) -> None:
        self.ws = ws
        self.ready = ready
        self.format = fmt
        self.seq = 0
        self.frame = 0
        self.room: dict | None = None  # listeners: the room's parameters
        self.token: str | None = ready.get("resume_token")
        self.auto_resume = resume and self.token is not None and reconnect is not None
        self.resumes = 0  # connections re-established
        self.audio_end = 0  # output received so far: audio before this sample ...
        self.frames_end = 0  # ... codes before this frame
        self._reconnect_ws = reconnect
        self._name = name
        self._ack_s = ack_interval_ms / 1000.0
        self._acked = (0, 0)
        self._last_ack = 0.0
        self._kept: deque[tuple[int, int, bytes]] = deque()  # input not yet consumed: (first, last, frame)
        self._flush_sent = False
        self._finished = False  # `done` received, or closed by us
        self._inbox: deque[dict] = deque()  # `resumed` messages, delivered by recv()
        self._lock = asyncio.Lock()  # sends and reconnections, in order
        self._gen = 0  # connection generation

    @classmethod
    async def connect(
        cls,
        url: str = DEFAULT_URL,
        *,
        mode: str = "loopback",
        sample_rate: int = 16000,
        format: str = "f32",
        bandwidth: float | None = None,
        latency: str | None = None,
        room: str | None = None,
        want: list[str] | None = None,
        name: str | None = "xcodec-stream-client",
        stats_interval_ms: int | None = None,
        max_size: int | None = 16 << 20,
        open_timeout: float = 10.0,
        token: str | None = None,
        ssl: SSLContext | None = None,
        resume: bool = False,
        ack_interval_ms: float = 100.0,
    ) -> Client:
        """`token`: sent as `Authorization: Bearer`; `ssl`: context for wss:// (e.g. a private CA);
        `resume`: reconnect and resume the session automatically when the connection drops."""
        headers = {"Authorization": f"Bearer {token}"} if token else None

        async def open_ws(target: str = url) -> ClientConnection:
            return await connect(
                target,
                compression=None,
                max_size=max_size,
                open_timeout=open_timeout,
                additional_headers=headers,
                ssl=ssl,
            )

        try:
            ws = await open_ws()
        except InvalidStatus as exc:
            status = exc.response.status_code
            # 503: every daemon behind a balancer is full (a daemon on its own sends server_full itself)
            code = {401: "unauthorized", 503: "server_full"}.get(status, "http_error")
            raise ServerError(code, f"handshake refused: HTTP {status}") from None
        hello = {
            "type": "hello",
            "version": PROTOCOL_VERSION,
            "mode": mode,
            "sample_rate": sample_rate,
            "format": format,
            "bandwidth": bandwidth,
            "latency": latency,
            "room": room,
            "want": want,
            "client": name,
            "stats_interval_ms": stats_interval_ms,
        }
        msg = await _handshake(ws, hello, "ready")
        node = msg.get("node")  # in a cluster the session lives on that daemon: a resume goes back there
        reconnect = (lambda: open_ws(with_node(url, node))) if node else open_ws
        return cls(
            ws, msg, format, reconnect=reconnect, resume=resume, ack_interval_ms=ack_interval_ms, name=name
        )

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def sample_rate(self) -> int:
        return int(self.ready["sample_rate"])

    async def send_audio(self, pcm: np.ndarray) -> int:
        """Send float32 samples (converted to the session format); returns the chunk's seq."""
        pcm = float_to_pcm(np.asarray(pcm), self.format)
        async with self._lock:
            seq = self.seq
            self.seq += 1
            frame = pack({"type": "audio", "seq": seq, "pcm": pcm})
            await self._send(frame, keep=(seq, seq))
        return seq

    async def send_codes(self, codes: np.ndarray) -> int:
        """Send (n_q, F) codes; returns the index of their first frame."""
        codes = np.asarray(codes).astype("<u2")
        async with self._lock:
            frame = self.frame
            self.frame += codes.shape[-1]
            data = pack({"type": "codes", "frame": frame, "codes": codes})
            await self._send(data, keep=(frame, frame + codes.shape[-1] - 1))
        return frame

    async def flush(self) -> None:
        async with self._lock:
            self._flush_sent = True
            await self._send(pack({"type": "flush"}))

    async def request_stats(self) -> None:
        async with self._lock:
            await self._send(pack({"type": "stats"}))

    async def _send(self, frame: bytes, keep: tuple[int, int] | None = None) -> None:
        """Send under the lock; chunks are kept until consumed. A dropped connection is resumed here (which
        sends the kept chunks again, this one included)."""
        if keep is not None and self.auto_resume:
            self._kept.append((*keep, frame))
        try:
            await self.ws.send(frame)
        except ConnectionClosed as exc:
            if not self._can_resume():
                raise ServerError("closed", f"connection closed: {exc}", True, self.ws.close_code) from None
            await self._resume()

    async def recv(self) -> dict:
        """Next server message, arrays decoded (audio pcm as float32). Fatal errors raise ServerError. With
        auto-resume, a dropped connection is resumed and a `resumed` message is returned in its place."""
        while True:
            if self._inbox:
                return self._inbox.popleft()
            gen = self._gen
            try:
                data = await self.ws.recv()
            except ConnectionClosed as exc:
                if not self._can_resume():
                    raise ServerError(
                        "closed", f"connection closed: {exc}", True, self.ws.close_code
                    ) from None
                async with self._lock:
                    if gen == self._gen:  # (the sender may have resumed already)
                        await self._resume()
                continue
            msg = unpack_server_message(data)
            self._received(msg)
            if msg["type"] == "audio":
                msg["pcm"] = pcm_to_float(msg["pcm"])
            elif msg["type"] == "room":
                self.room = msg
            elif msg["type"] == "error" and msg.get("fatal"):
                self._finished = True
                raise ServerError(msg["code"], msg["message"], True)
            if self.auto_resume:
                await self._maybe_ack()
            return msg

    def _received(self, msg: dict) -> None:
        kind = msg["type"]
        if kind == "audio":
            self.audio_end = max(self.audio_end, msg["sample"] + msg["pcm"].shape[-1])
        elif kind == "codes":
            self.frames_end = max(self.frames_end, msg["frame"] + msg["codes"].shape[-1])
        elif kind == "done":
            self._finished = True
        seq_end = msg.get("seq_end")
        if seq_end is not None:  # consumed: no resend needed any more
            while self._kept and self._kept[0][1] <= seq_end:
                self._kept.popleft()

    async def _maybe_ack(self) -> None:
        now = time.monotonic()
        pos = (self.audio_end, self.frames_end)
        if pos != self._acked and now - self._last_ack >= self._ack_s:
            self._acked, self._last_ack = pos, now
            with contextlib.suppress(ConnectionClosed):  # a dropped connection shows in recv()
                await self.ws.send(pack({"type": "ack", "sample": pos[0], "frame": pos[1]}))

    def _can_resume(self) -> bool:
        # no close frame from the server: the connection dropped (a server that ends a session says why)
        return self.auto_resume and not self._finished and self.ws.protocol.close_rcvd is None

    async def _resume(self) -> None:
        """Reconnect (called under the lock) until the server's grace period is over; then send the input it
        has not received, and the flush if it was lost."""
        grace = float(self.ready.get("limits", {}).get("resume_grace_s") or 0.0)
        deadline = time.monotonic() + max(grace, 1.0)
        delay = 0.05
        hello = {
            "type": "hello",
            "version": PROTOCOL_VERSION,
            "resume": self.token,
            "sample": self.audio_end,
            "frame": self.frames_end,
            "client": self._name,
        }
        while True:
            try:
                ws = await self._reconnect_ws()
                resumed = await _handshake(ws, hello, "resumed")
                break
            except ServerError as exc:
                if exc.code not in ("closed", "server_full", "http_error") or time.monotonic() > deadline:
                    self._finished = True
                    raise
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                if time.monotonic() > deadline:
                    self._finished = True
                    raise ServerError("closed", f"could not resume the session: {exc}") from None
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)
        self.ws = ws
        self._gen += 1
        self.resumes += 1
        self._inbox.append(resumed)
        first = resumed.get("next_frame" if "next_frame" in resumed else "next_seq")
        if first is not None:
            while self._kept and self._kept[0][0] < first:
                self._kept.popleft()
            for _, _, frame in list(self._kept):
                await ws.send(frame)
        if self._flush_sent and resumed["state"] == "ready":
            await ws.send(pack({"type": "flush"}))

    async def close(self) -> None:
        self._finished = True
        await self.ws.close()


async def _handshake(ws: ClientConnection, hello: dict, expect: str) -> dict:
    """Send `hello`, return the answer of type `expect`; an `error` (or anything else) raises ServerError."""
    try:
        await ws.send(pack(hello))
    except ConnectionClosed:
        pass  # the server may have refused us at once (server_full): its error is still to be read
    try:
        msg = unpack_server_message(await ws.recv())
    except ConnectionClosed as exc:
        raise ServerError(
            "closed", f"connection closed during the handshake: {exc}", True, ws.close_code
        ) from None
    if msg["type"] == "error":
        await ws.close()
        raise ServerError(msg["code"], msg["message"], msg.get("fatal", True), ws.close_code)
    if msg["type"] != expect:
        await ws.close()
        raise ServerError("bad_message", f"expected {expect}, got {msg['type']}")
    return msg


@dataclass
class StreamResult:
    """Everything a streamed run returned."""

    ready: dict
    audio: np.ndarray  # float32 at the client rate (loopback/decode/listen)
    codes: np.ndarray  # (n_q, F) int64 (encode, loopback with want codes, listen with codes)
    done: dict
    latency: LatencyTracker
    messages: dict[str, int] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    room: dict | None = None


class _Collector:
    """Reassembles output by its `sample`/`frame` indexes (gaps from drops stay zero)."""

    def __init__(self, n_q: int) -> None:
        self.audio: list[tuple[int, np.ndarray]] = []
        self.codes: list[tuple[int, np.ndarray]] = []
        self.n_q = n_q
        self.audio_end = 0
        self.frames_end = 0

    def add(self, msg: dict) -> None:
        if msg["type"] == "audio":
            self.audio.append((msg["sample"], msg["pcm"]))
            self.audio_end = max(self.audio_end, msg["sample"] + msg["pcm"].size)
        elif msg["type"] == "codes":
            self.codes.append((msg["frame"], msg["codes"]))
            self.frames_end = max(self.frames_end, msg["frame"] + msg["codes"].shape[-1])

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        audio = np.zeros(self.audio_end, np.float32)
        for start, pcm in self.audio:
            audio[start : start + pcm.size] = pcm
        first = min((f for f, _ in self.codes), default=0)
        n_q = self.codes[0][1].shape[0] if self.codes else self.n_q
        codes = np.zeros((n_q, self.frames_end - first), np.int64)
        for f, c in self.codes:
            codes[:, f - first : f - first + c.shape[-1]] = c
        return audio, codes


async def stream(
    client: Client,
    signal: np.ndarray | None = None,
    *,
    chunk_ms: float = 20.0,
    realtime: bool = False,
    codes: np.ndarray | None = None,
    chunks: list[int] | None = None,
    window_ms: float | None = None,
    on_message: Any = None,
) -> StreamResult:
    """Send a whole signal (float32 at the client rate) or code array (decode mode) in chunks, then flush,
    and collect every reply until `done`.

    realtime: pace chunks at the signal's own rate; otherwise send as fast as the server takes them, with at
    most `window_ms` of input not yet acknowledged (default: half the server's max_backlog_ms) and at most
    the server's message rate. `chunks`: explicit chunk lengths (samples, or frames in decode mode).
    """
    ready = client.ready
    rate = client.sample_rate
    decode = ready["mode"] == "decode"
    limits = ready["limits"]
    if decode:
        assert codes is not None, "decode mode streams codes"
        total = codes.shape[-1]
        unit_ms = 1000.0 / ready["frame_rate"]
        default_chunk = max(1, round(chunk_ms / unit_ms))
    else:
        assert signal is not None, "this mode streams audio"
        signal = np.asarray(signal, dtype=np.float32).reshape(-1)
        total = signal.size
        unit_ms = 1000.0 / rate
        default_chunk = max(1, round(chunk_ms * rate / 1000))
    if chunks is None:
        chunks = [default_chunk] * (total // default_chunk) + (
            [total % default_chunk] if total % default_chunk else []
        )
    assert sum(chunks) == total, "chunk lengths must add up to the signal length"
    window = window_ms if window_ms is not None else 0.5 * limits["max_backlog_ms"]
    window_units = max(window / unit_ms, max(chunks, default=1))
    min_gap = 1.0 / (0.8 * limits["max_messages_per_second"])  # stay under the server's message rate

    tracker = LatencyTracker()
    collector = _Collector(ready["n_q"])
    acked_units = 0
    ack_event = asyncio.Event()
    ends: list[int] = []  # cumulative end (input units) of each seq
    counts: dict[str, int] = {}
    errors: list[dict] = []
    done: dict = {}
    # output position of a chunk's end: loopback audio samples, encode frames
    frame_size_in = ready["frame_size"] * rate / ready["codec_sample_rate"]

    def out_pos(end_units: int) -> int:
        if ready["mode"] == "encode" or (ready["mode"] == "loopback" and "audio" not in ready["want"]):
            return int(np.ceil(end_units / frame_size_in))
        if decode:
            return int(round(end_units * ready["frame_size"] * rate / ready["codec_sample_rate"]))
        return end_units

    async def receive() -> None:
        nonlocal acked_units, done
        while True:
            msg = await client.recv()
            counts[msg["type"]] = counts.get(msg["type"], 0) + 1
            if on_message is not None:
                on_message(msg)
            kind = msg["type"]
            seq_end = msg.get("seq_end")
            if seq_end is not None:
                tracker.acked(seq_end if not decode else _seq_of_frame(ends, seq_end))
                acked_units = seq_end + 1 if decode else ends[seq_end]
                ack_event.set()
            if kind in ("audio", "codes"):
                collector.add(msg)
                if kind == "audio" and "audio" in ready["want"]:
                    tracker.output(collector.audio_end)
                elif kind == "codes" and (ready["mode"] == "encode" or "audio" not in ready["want"]):
                    tracker.output(collector.frames_end)
            elif kind == "error":
                errors.append(msg)
            elif kind == "done":
                done = msg
                return

    recv_task = asyncio.create_task(receive())
    t0 = time.monotonic()
    pos = 0
    last_send = 0.0
    try:
        for n in chunks:
            if recv_task.done():
                break
            if realtime:
                delay = t0 + pos * unit_ms / 1000.0 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                while pos + n - acked_units > window_units and not recv_task.done():
                    ack_event.clear()
                    waiter = asyncio.ensure_future(ack_event.wait())
                    await asyncio.wait({recv_task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                gap = last_send + min_gap - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap)
            last_send = time.monotonic()
            if decode:
                await client.send_codes(codes[:, pos : pos + n])
                ends.append(pos + n)
                tracker.sent(len(ends) - 1, out_pos(pos + n))
            else:
                seq = await client.send_audio(signal[pos : pos + n])
                ends.append(pos + n)
                tracker.sent(seq, out_pos(pos + n))
            pos += n
        if not recv_task.done():
            await client.flush()
        await recv_task
    except ServerError as exc:
        if exc.code != "closed":
            raise
        # A send hit a closed socket: what the server said before closing decides (an error, or `done`:
        # the server ended the stream itself, e.g. when shutting down, and the result stands).
        await asyncio.wait({recv_task}, timeout=2.0)
        if not recv_task.done() or recv_task.cancelled():
            raise
        if recv_task.exception() is not None:
            raise recv_task.exception() from None
    finally:
        if not recv_task.done():
            recv_task.cancel()
    audio, code_arr = collector.result()
    return StreamResult(ready, audio, code_arr, done, tracker, counts, errors, client.room)


def _seq_of_frame(ends: list[int], last_frame: int) -> int:
    """Decode mode: index of the last codes message whose frames are all <= last_frame."""
    return bisect.bisect_right(ends, last_frame + 1) - 1


async def listen(client: Client, *, on_message: Any = None) -> StreamResult:
    """Collect a room's output until its `done`."""
    collector = _Collector(client.ready["n_q"])
    counts: dict[str, int] = {}
    errors: list[dict] = []
    tracker = LatencyTracker()
    while True:
        try:
            msg = await client.recv()
        except ServerError as exc:
            if exc.code == "closed" and counts.get("done"):
                break
            raise
        counts[msg["type"]] = counts.get(msg["type"], 0) + 1
        if on_message is not None:
            on_message(msg)
        if msg["type"] in ("audio", "codes"):
            collector.add(msg)
        elif msg["type"] == "error":
            errors.append(msg)
        elif msg["type"] == "done":
            done = msg
            break
    audio, codes = collector.result()
    return StreamResult(client.ready, audio, codes, done, tracker, counts, errors, client.room)
