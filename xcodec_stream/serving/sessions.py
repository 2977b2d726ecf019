"""One connection's session: the protocol state machine (no socket I/O), its bounded output queue and limits."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .config import ServerConfig
from .protocol import (
    CLOSE_ROOM_ENDED,
    FORMATS,
    PROTOCOL_VERSION,
    Audio,
    ClientMessage,
    Codes,
    Flush,
    Hello,
    ProtocolError,
    StatsRequest,
    error_message,
    pack,
    parse_client_message,
)
from .rooms import Room, RoomRegistry
from .worker import EngineInfo, StepResult, StreamSpec, Worker, WorkerFull

log = logging.getLogger("xcodec_stream.session")

DEFAULT_WANT = {
    "loopback": ("audio",),
    "listen": ("audio",),
    "publish": (),
    "encode": ("codes",),
    "decode": ("audio",),
}


@dataclass(frozen=True)
class CodecInfo:
    """What the server tells clients about its model."""

    model_id: str
    sample_rate: int
    frame_size: int
    frame_rate: float
    num_quantizers: int
    codebook_size: int
    bandwidths: tuple[float, ...]


class QueueOverflow(Exception):
    """Control messages piled up: the client does not read."""


class OutputQueue:
    """Messages waiting for the socket, in order. Data (audio/codes) is bounded in milliseconds: beyond
    `max_data_ms` the OLDEST data message is dropped and counted; control messages are never dropped, but
    more than `max_control` of them waiting means the client stopped reading (QueueOverflow)."""

    def __init__(self, max_data_ms: float, max_control: int) -> None:
        self.max_data_ms = max_data_ms
        self.max_control = max_control
        self._items: deque[tuple[bool, dict, float]] = deque()  # (is_data, msg, ms)
        self.data_ms = 0.0
        self.n_control = 0
        self.dropped = 0
        self._event = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._items)

    def put_control(self, msg: dict, *, force: bool = False) -> None:
        if self.n_control >= self.max_control and not force:
            raise QueueOverflow(f"{self.n_control} control messages not read")
        self._items.append((False, msg, 0.0))
        self.n_control += 1
        self._event.set()
        self._empty.clear()

    def put_data(self, msg: dict, ms: float) -> None:
        # Drop the oldest data first; the newest message is always kept (it may alone exceed the bound).
        while self.data_ms + ms > self.max_data_ms and self._drop_oldest_data():
            pass
        self._items.append((True, msg, ms))
        self.data_ms += ms
        self._event.set()
        self._empty.clear()

    def _drop_oldest_data(self) -> bool:
        for i, (is_data, _, old_ms) in enumerate(self._items):
            if is_data:
                del self._items[i]
                self.data_ms -= old_ms
                self.dropped += 1
                return True
        return False

    def pop(self) -> dict | None:
        if not self._items:
            return None
        is_data, msg, ms = self._items.popleft()
        if is_data:
            self.data_ms -= ms
            msg["dropped"] = self.dropped  # every data message carries the running count
        else:
            self.n_control -= 1
        if not self._items:
            self._event.clear()
            self._empty.set()
        return msg

    async def get(self) -> dict:
        while True:
            msg = self.pop()
            if msg is not None:
                return msg
            await self._event.wait()

    async def join(self) -> None:
        """Wait until every queued message has been taken by the writer."""
        await self._empty.wait()


class TokenBucket:
    """Message rate limit: `rate` per second on average, bursts up to `burst`."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.tokens, self.t = float(burst), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Session:
    """Protocol state of one connection. `handle(frame)` consumes client frames, `on_result` worker output;
    everything to send goes to `out`. A fatal error sets `close_code`/`close_reason`; the server then drains
    `out` and closes the socket. States: handshake -> ready -> done (after flush) ; closed."""

    def __init__(
        self,
        sid: int,
        *,
        config: ServerConfig,
        codec: CodecInfo,
        worker: Worker,
        rooms: RoomRegistry,
        sessions: dict[int, Session],
    ) -> None:
        self.sid = sid
        self.config = config
        self.codec = codec
        self.worker = worker
        self.rooms = rooms
        self.sessions = sessions
        self.out = OutputQueue(config.max_output_queue_ms, config.max_control_queue)
        self.bucket = TokenBucket(config.max_messages_per_second, config.message_burst)
        self.state = "handshake"
        self.hello: Hello | None = None
        self.info: EngineInfo | None = None
        self.room: Room | None = None
        self.want_audio = self.want_codes = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.closing = asyncio.Event()  # set with close_code: the server drains `out` and closes
        self.next_seq = 0  # audio: next seq expected; decode: next frame expected
        self.received = 0  # client-rate samples (decode: frames) accepted
        self.consumed = 0  # ... of which the worker has processed
        self.samples_out = 0
        self.frames_out = 0
        self.rejected_in_a_row = 0
        self.errors: dict[str, int] = {}
        self.started = time.monotonic()
        self._stats_task: asyncio.Task | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def mode(self) -> str | None:
        return self.hello.mode if self.hello else None

    @property
    def rate(self) -> int:
        return self.hello.sample_rate if self.hello else self.codec.sample_rate

    def _unit_ms(self) -> float:
        """Milliseconds per input unit: a sample at the client rate, or a frame in decode mode."""
        return 1000.0 / (self.codec.frame_rate if self.mode == "decode" else self.rate)

    @property
    def lag_ms(self) -> float:
        """Input accepted but not yet processed by the worker."""
        return (self.received - self.consumed) * self._unit_ms()

    @property
    def busy(self) -> bool:
        """The server owes this session work: input not yet processed, or a flush not yet done."""
        return self.received > self.consumed or self.state == "flushing"

    def fail(self, err: ProtocolError) -> None:
        """Queue the error; if fatal, mark the session for closing with the error's close code."""
        self.errors[err.code] = self.errors.get(err.code, 0) + 1
        msg = error_message(err)
        if err.fatal:
            self.out.put_control(msg, force=True)
            self._set_close(err.close_code, err.code)
            return
        try:
            self.out.put_control(msg)
        except QueueOverflow:
            self.fail(ProtocolError("too_slow", "the client does not read its messages"))

    def _control(self, msg: dict) -> None:
        try:
            self.out.put_control(msg)
        except QueueOverflow:
            self.fail(ProtocolError("too_slow", "the client does not read its messages"))

    # ------------------------------------------------------------------ client frames
    async def handle(self, data: bytes | str) -> None:
        """Process one client frame. Never raises ProtocolError: errors become `error` messages."""
        if self.close_code is not None or self.state == "closed":
            return
        try:
            if not self.bucket.take():
                self.rejected_in_a_row += 1
                if self.rejected_in_a_row >= self.config.flood_close_after:
                    raise ProtocolError("rate_limited", "message flood; closing", fatal=True)
                raise ProtocolError(
                    "rate_limited", f"more than {self.config.max_messages_per_second:g} messages/s"
                )
            msg = parse_client_message(data)
            if self.state == "handshake":
                if not isinstance(msg, Hello):
                    raise ProtocolError("bad_state", "the first message must be hello", fatal=True)
                await self._hello(msg)
            else:
                self._dispatch(msg)
            self.rejected_in_a_row = 0
        except ProtocolError as err:
            if self.state in ("handshake", "opening"):
                err.fatal = True  # no session to go on with
            self.fail(err)

    def _dispatch(self, msg: ClientMessage) -> None:
        if isinstance(msg, Hello):
            raise ProtocolError("bad_state", "hello was already accepted")
        if isinstance(msg, StatsRequest):
            self._control(self.stats_message())
            return
        if self.state == "done":
            raise ProtocolError(
                "bad_state", "the stream is finished (flush was processed); open a new connection"
            )
        if isinstance(msg, Audio):
            self._audio(msg)
        elif isinstance(msg, Codes):
            self._codes(msg)
        elif isinstance(msg, Flush):
            if self.mode == "listen":
                raise ProtocolError("bad_state", "listeners cannot flush")
            if self.state == "flushing":
                raise ProtocolError("bad_state", "flush already sent")
            self.state = "flushing"
            self.worker.flush(self.sid)

    def _audio(self, msg: Audio) -> None:
        if self.mode not in ("loopback", "encode", "publish"):
            raise ProtocolError("bad_state", f"audio is not accepted in {self.mode} mode")
        if self.state == "flushing":
            raise ProtocolError("bad_state", "audio after flush")
        if msg.seq != self.next_seq:
            raise ProtocolError("bad_seq", f"audio.seq {msg.seq} but {self.next_seq} expected")
        want = FORMATS[self.hello.format]
        if msg.pcm.dtype.str != want:
            raise ProtocolError(
                "bad_audio", f"format {self.hello.format} needs {want} samples, got {msg.pcm.dtype.str}"
            )
        n = msg.pcm.size
        if n * 1000.0 / self.rate > self.config.max_chunk_ms:
            raise ProtocolError(
                "too_large", f"chunk of {n} samples is over max_chunk_ms={self.config.max_chunk_ms:g}"
            )
        if self.lag_ms + n * 1000.0 / self.rate > self.config.max_backlog_ms:
            raise ProtocolError(
                "rate_limited",
                f"{self.lag_ms:.0f} ms of audio not yet processed (max_backlog_ms={self.config.max_backlog_ms:g}); "
                f"resend seq {msg.seq} later",
            )
        self.next_seq += 1
        self.received += n
        self.worker.push_audio(self.sid, msg.seq, msg.pcm)

    def _codes(self, msg: Codes) -> None:
        if self.mode != "decode":
            raise ProtocolError("bad_state", f"codes are not accepted in {self.mode} mode")
        if self.state == "flushing":
            raise ProtocolError("bad_state", "codes after flush")
        n_q, n = msg.codes.shape
        if n_q != self.info.n_q:
            raise ProtocolError(
                "bad_codes", f"codes have n_q={n_q}, this session decodes n_q={self.info.n_q}"
            )
        if n and int(msg.codes.max()) >= self.codec.codebook_size:
            raise ProtocolError(
                "bad_codes",
                f"code {int(msg.codes.max())} outside the codebook (size {self.codec.codebook_size})",
            )
        if msg.frame != self.next_seq:
            raise ProtocolError("bad_seq", f"codes.frame {msg.frame} but {self.next_seq} expected")
        if n * self._unit_ms() > self.config.max_chunk_ms:
            raise ProtocolError("too_large", f"{n} frames is over max_chunk_ms={self.config.max_chunk_ms:g}")
        if self.lag_ms + n * self._unit_ms() > self.config.max_backlog_ms:
            raise ProtocolError(
                "rate_limited",
                f"{self.lag_ms:.0f} ms of codes not yet processed; resend frame {msg.frame} later",
            )
        self.next_seq += n
        self.received += n
        self.worker.push_codes(self.sid, msg.frame, msg.codes)

    # ------------------------------------------------------------------ handshake
    async def _hello(self, hello: Hello) -> None:
        cfg = self.config
        if hello.mode == "listen":
            await self._hello_listen(hello)
            return
        preset = hello.latency or cfg.default_latency
        if preset not in cfg.allowed_presets:
            raise ProtocolError(
                "bad_field",
                f"latency preset {preset!r} not enabled here; allowed: {list(cfg.allowed_presets)}",
            )
        bandwidth = hello.bandwidth if hello.bandwidth is not None else cfg.default_bandwidth
        if bandwidth is not None and not any(abs(bandwidth - b) < 1e-6 for b in self.codec.bandwidths):
            raise ProtocolError(
                "bad_field",
                f"bandwidth {bandwidth:g} kbps not offered; choose from {list(self.codec.bandwidths)}",
            )
        if bandwidth is not None:
            bandwidth = next(b for b in self.codec.bandwidths if abs(bandwidth - b) < 1e-6)
        want = hello.want if hello.want is not None else DEFAULT_WANT[hello.mode]
        if hello.mode == "publish" and "audio" in want:
            raise ProtocolError("bad_field", "a publisher can only want codes (its own)")
        self.hello = hello
        self.want_audio, self.want_codes = "audio" in want, "codes" in want
        self.state = "opening"
        if hello.mode == "publish" and self.rooms.get(hello.room) is not None:
            raise ProtocolError("room_busy", f"room {hello.room!r} already has a publisher")
        spec = StreamSpec(
            hello.mode, hello.sample_rate, hello.format, preset, bandwidth, want_audio=self.want_audio
        )
        try:
            fut = self.worker.open(self.sid, spec)
        except WorkerFull as exc:
            raise ProtocolError("server_full", str(exc)) from None
        try:
            self.info = await asyncio.wrap_future(fut)
        except Exception as exc:
            raise ProtocolError("internal", f"could not open the stream: {exc}") from None
        if hello.mode == "publish":
            self.room = self.rooms.create(hello.room, self, self._room_params(preset, bandwidth))
        self._go(preset, bandwidth, want)

    async def _hello_listen(self, hello: Hello) -> None:
        """Listeners take the room's preset and bandwidth (hello.latency/bandwidth are ignored)."""
        want = hello.want if hello.want is not None else DEFAULT_WANT["listen"]
        self.hello = hello
        self.want_audio, self.want_codes = "audio" in want, "codes" in want
        self.state = "opening"
        self._join_room(hello)
        params = self.room.params
        self._go(params["latency"], params["bandwidth"], want)
        if self.state == "ready":
            self._control(self.room.room_message())  # before any frame: what the codes mean

    def _go(self, preset: str, bandwidth: float | None, want: tuple[str, ...]) -> None:
        if self.close_code is not None:
            return
        self.state = "ready"
        self._control(self._ready(preset, bandwidth, want))
        hello = self.hello
        if hello.stats_interval_ms:
            self._stats_task = asyncio.get_running_loop().create_task(
                self._periodic_stats(hello.stats_interval_ms)
            )

    async def _periodic_stats(self, interval_ms: int) -> None:
        while self.state not in ("closed",) and self.close_code is None:
            await asyncio.sleep(interval_ms / 1000.0)
            self._control(self.stats_message())

    def _join_room(self, hello: Hello) -> None:
        room = self.rooms.join(hello.room, self)
        self.room = room
        pub = room.publisher
        if self.want_audio:
            try:
                self.worker.attach_listener(pub.sid, self.sid, hello.sample_rate, hello.format)
            except WorkerFull as exc:
                self.rooms.leave(room.name, self)
                raise ProtocolError("server_full", str(exc)) from None
        p = room.params
        self.info = EngineInfo(
            n_q=p["n_q"],
            latency_ms=p["encoder_latency_ms"] + (p["decoder_latency_ms"] if self.want_audio else 0.0),
            encoder_latency_ms=p["encoder_latency_ms"],
            decoder_latency_ms=p["decoder_latency_ms"],
            lookahead_frames=p["lookahead_frames"],
            frame_size=self.codec.frame_size,
        )

    def _room_params(self, preset: str, bandwidth: float | None) -> dict:
        info = self.info
        return {
            "n_q": info.n_q,
            "bandwidth": bandwidth if bandwidth is not None else self.codec.bandwidths[-1],
            "frame_rate": self.codec.frame_rate,
            "frame_size": self.codec.frame_size,
            "codebook_size": self.codec.codebook_size,
            "latency": preset,
            "encoder_latency_ms": info.encoder_latency_ms,
            "decoder_latency_ms": info.decoder_latency_ms,
            "lookahead_frames": info.lookahead_frames,
            "publisher_sample_rate": self.rate,
        }

    def _ready(self, preset: str, bandwidth: float | None, want: tuple[str, ...]) -> dict:
        cfg, codec, info = self.config, self.codec, self.info
        return {
            "type": "ready",
            "version": PROTOCOL_VERSION,
            "session": self.sid,
            "resume_token": secrets.token_urlsafe(16),  # reserved: this version does not accept resumes yet
            "mode": self.mode,
            "model": codec.model_id,
            "codec_sample_rate": codec.sample_rate,
            "sample_rate": self.rate,
            "format": self.hello.format,
            "frame_size": codec.frame_size,
            "frame_rate": codec.frame_rate,
            "n_q": info.n_q,
            "max_n_q": codec.num_quantizers,
            "codebook_size": codec.codebook_size,
            "bandwidth": bandwidth if bandwidth is not None else codec.bandwidths[-1],
            "bandwidths": list(codec.bandwidths),
            "latency": preset,
            "algorithmic_latency_ms": round(info.latency_ms, 3),
            "lookahead_frames": info.lookahead_frames,
            "want": list(want),
            "room": self.hello.room,
            "limits": {
                "max_message_bytes": cfg.max_message_bytes,
                "max_chunk_ms": cfg.max_chunk_ms,
                "max_backlog_ms": cfg.max_backlog_ms,
                "max_output_queue_ms": cfg.max_output_queue_ms,
                "max_messages_per_second": cfg.max_messages_per_second,
                "message_burst": cfg.message_burst,
                "idle_timeout_s": cfg.idle_timeout_s,
            },
        }

    # ------------------------------------------------------------------ worker output
    def on_result(self, r: StepResult) -> None:
        if self.state == "closed":
            return
        if r.error is not None:
            self.fail(ProtocolError(r.error, "the codec step failed for this session"))
            return
        self.consumed += r.consumed
        sent = False
        if r.codes is not None:
            self.frames_out += r.codes.shape[-1]
            if self.want_codes:
                msg = {"type": "codes", "frame": r.frame, "codes": r.codes, "seq_end": r.seq_end}
                self.out.put_data(msg, r.codes.shape[-1] * 1000.0 / self.codec.frame_rate)
                sent = True
            if self.room is not None:
                self.room.broadcast_codes(r.frame, r.codes, 1000.0 / self.codec.frame_rate)
        if r.audio is not None:
            self.samples_out += r.audio.size
            msg = {"type": "audio", "sample": r.sample, "pcm": r.audio, "seq_end": r.seq_end}
            self.out.put_data(msg, 1000.0 * r.audio.size / self.rate)
            sent = True
        if r.listeners and self.room is not None:
            rates = {sid: m.rate for sid, m in self.room.listeners.items()}
            self.room.send_audio({k: v for k, v in r.listeners.items() if k in rates}, rates)
        if r.done is not None:
            self.state = "done"
            self._control({"type": "done", **r.done, "dropped": self.out.dropped})
            if self.room is not None and self.mode == "publish":
                self.rooms.end(self.room.name, "publisher_done")
        elif not sent and r.seq_end is not None:
            self._control({"type": "ack", "seq_end": r.seq_end})

    # listener side of a room
    def room_data(self, msg: dict, duration_ms: float) -> None:
        if msg["type"] == "codes":
            self.frames_out += msg["codes"].shape[-1]
        else:
            self.samples_out += msg["pcm"].size
        self.out.put_data(msg, duration_ms)

    def room_ended(self, reason: str) -> None:
        if self.state == "closed":
            return
        self.state = "done"
        self.room = None
        self._control(
            {
                "type": "done",
                "reason": reason,
                "samples_out": self.samples_out,
                "frames_out": self.frames_out,
                "dropped": self.out.dropped,
            }
        )
        self._set_close(CLOSE_ROOM_ENDED, reason)

    def _set_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self.closing.set()

    def stats_message(self) -> dict:
        return {
            "type": "stats",
            "session": self.sid,
            "state": self.state,
            "lag_ms": round(self.lag_ms, 3),
            "received": self.received,
            "consumed": self.consumed,
            "samples_out": self.samples_out,
            "frames_out": self.frames_out,
            "output_queue": len(self.out),
            "output_queue_ms": round(self.out.data_ms, 3),
            "dropped": self.out.dropped,
            "errors": dict(self.errors),
            "worker_tick_ms": round(self.worker.last_tick_ms, 3),
            "worker_batch": self.worker.last_batch,
            "sessions": len(self.sessions),
        }

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Connection gone: free the worker slots, leave or end the room. Idempotent."""
        if self.state == "closed":
            return
        mode, room = self.mode, self.room
        self.state = "closed"
        if self._stats_task is not None:
            self._stats_task.cancel()
        if mode == "listen" and room is not None:
            self.rooms.leave(room.name, self)
            if self.want_audio:
                self.worker.detach_listener(room.publisher.sid, self.sid)
        elif mode is not None:
            self.worker.close(self.sid)
            if mode == "publish" and room is not None:
                self.rooms.end(room.name, "publisher_left")


def error_close(err: ProtocolError) -> tuple[bytes, int, str]:
    """Frame, close code and reason for an error raised before a Session exists (e.g. server_full)."""
    return pack(error_message(err)), err.close_code, err.code
