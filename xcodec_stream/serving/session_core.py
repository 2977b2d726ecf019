"""One session's protocol as a sans-I/O state machine: `feed(event)` returns the actions to carry out.

No sockets, no asyncio, no awaiting: the asyncio adapter (sessions.Session) turns client frames, worker results,
room traffic and timers into events and carries out the actions (worker calls, room calls, timers, closing).
Messages for the client go to the machine's own outbox, `out` (flow.OutputQueue: filled here, emptied by the
adapter's writer, which alone waits on it): its slow-reader policy (the oldest data dropped and counted, too
many control messages unread) is part of the protocol, as the `dropped` counts and `too_slow` show.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import ServerConfig
from .flow import OutputQueue, QueueOverflow, TokenBucket
from .logs import session_log
from .modes import Mode
from .protocol import (
    CLOSE_ROOM_ENDED,
    FORMATS,
    PROTOCOL_VERSION,
    Ack,
    Audio,
    ClientMessage,
    Codes,
    Flush,
    Hello,
    ProtocolError,
    StatsRequest,
    error_message,
    parse_client_message,
)
from .resume import ReplayBuffer, span
from .rooms import Room
from .session_events import (
    Action,
    AttachListener,
    BroadcastCodes,
    ClaimRoom,
    Close,
    Closed,
    CloseStream,
    DetachListener,
    EndRoom,
    Event,
    Failed,
    FlushStream,
    JoinRoom,
    LeaveRoom,
    ListenerAttached,
    OpenRoom,
    OpenStream,
    PushAudio,
    PushCodes,
    Received,
    Result,
    RoomClaimed,
    RoomData,
    RoomEnded,
    RoomJoined,
    RoomOpened,
    SendRoomAudio,
    Shutdown,
    StartStats,
    StatsDue,
    StepFailed,
    StopStats,
    StreamOpened,
    UnclaimRoom,
)
from .worker import EngineInfo, StepResult, StreamSpec

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("xcodec_stream.session")

DEFAULT_WANT = {
    Mode.LOOPBACK: ("audio",),
    Mode.LISTEN: ("audio",),
    Mode.PUBLISH: (),
    Mode.ENCODE: ("codes",),
    Mode.DECODE: ("audio",),
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


@dataclass(frozen=True)
class ServerFigures:
    """The server-wide figures a `stats` message carries (read when one is made)."""

    worker_tick_ms: float = 0.0
    worker_batch: int = 0
    sessions: int = 0


class SessionMachine:
    """Protocol state of one session. States: handshake -> opening -> ready -> flushing -> done ; closed.

    A fatal error sets `close_code`/`close_reason` and returns `Close`; the adapter then drains `out` and
    closes the socket. A session outlives its connection when resume is on: while `attached` is False (the
    connection dropped) it keeps its slots and its output (pinned, never dropped) for `[resume] grace_s`;
    `resume_front` gives what a returning client must get first. Output handed to a socket stays in `replay`
    until acknowledged.
    """

    def __init__(
        self,
        sid: int,
        *,
        config: ServerConfig,
        codec: CodecInfo,
        node: str | None = None,
        metrics: Metrics | None = None,
        figures: Callable[[], ServerFigures] = ServerFigures,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sid = sid
        self.config = config
        self.codec = codec
        self.node = node  # in a cluster: the daemon holding this session (`ready.node`)
        self.metrics = metrics
        self.figures = figures
        self.log = session_log(log, sid)
        self.out = OutputQueue(
            config.max_output_queue_ms,
            config.max_control_queue,
            on_drop=metrics.dropped.inc if metrics is not None else None,
        )
        self.bucket = TokenBucket(config.max_messages_per_second, config.message_burst, clock)
        self.state = "handshake"
        self.hello: Hello | None = None
        self.info: EngineInfo | None = None
        self.room: Room | None = None
        self.want_audio = self.want_codes = False
        self.close_code: int | None = None
        self.close_reason = ""
        self.next_seq = 0  # audio: next seq expected; decode: next frame expected
        self.received = 0  # client-rate samples (decode: frames) accepted
        self.consumed = 0  # ... of which the worker has processed
        self.samples_out = 0
        self.frames_out = 0
        self.rejected_in_a_row = 0
        self.errors: dict[str, int] = {}
        self.started = clock()
        self.stats_on = False  # a StartStats is in force (StopStats on close)
        # the handshake's choices, kept across its steps
        self._preset = ""
        self._bandwidth: float | None = None
        self._want: tuple[str, ...] = ()
        self._spec: StreamSpec | None = None
        self._attaching = False  # AttachListener is out: a failure must leave the room again
        # resume
        self.token: str | None = None  # set by the server when resume is on
        self.replay = ReplayBuffer(config.resume_max_unacked_ms) if config.resume_enabled else None
        self.attached = True  # a connection is serving this session
        self.seq_end: int | None = None  # last input seq (decode: frame) the codec consumed
        self.done_msg: dict | None = None
        self.done_sent = False  # `done` was handed to a socket (a resumed client gets it again)
        self.shutting_down = False
        self._claimed = False  # publish: the room name is ours (released by close if no room came of it)
        self._actions: list[Action] = []

    # ------------------------------------------------------------------ events in, actions out
    def feed(self, event: Event) -> list[Action]:
        """Apply one event; the actions, in the order they must be carried out."""
        self._actions = []
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"not a session event: {event!r}")
        handler(self, event)
        actions, self._actions = self._actions, []
        return actions

    def _do(self, action: Action) -> None:
        self._actions.append(action)

    # ------------------------------------------------------------------ figures
    @property
    def mode(self) -> Mode | None:
        return self.hello.mode if self.hello else None

    @property
    def rate(self) -> int:
        return self.hello.sample_rate if self.hello else self.codec.sample_rate

    def _unit_ms(self) -> float:
        """Milliseconds per input unit: a sample at the client rate, or a frame in decode mode."""
        return 1000.0 / (self.codec.frame_rate if self.mode == Mode.DECODE else self.rate)

    @property
    def lag_ms(self) -> float:
        """Input accepted but not yet processed by the worker."""
        return (self.received - self.consumed) * self._unit_ms()

    @property
    def busy(self) -> bool:
        """The server owes this session work: input not yet processed, or a flush not yet done."""
        return self.received > self.consumed or self.state == "flushing"

    @property
    def drained(self) -> bool:
        """Nothing more will come from the codec for this session."""
        return (
            self.close_code is not None
            or self.state in ("done", "closed")
            or (self.mode == Mode.LISTEN and self.room is None)
        )

    # ------------------------------------------------------------------ errors
    def _fail(self, err: ProtocolError) -> None:
        """Queue the error; if fatal, close with the error's close code."""
        self.errors[err.code] = self.errors.get(err.code, 0) + 1
        if self.metrics is not None:
            self.metrics.error(err.code)
        msg = error_message(err)
        if err.fatal:
            self.log.info("fatal error %s: %s", err.code, err.message)
            self.out.put_control(msg, force=True)
            self._set_close(err.close_code, err.code)
            return
        try:
            self.out.put_control(msg)
        except QueueOverflow:
            self._fail(ProtocolError("too_slow", "the client does not read its messages"))

    def _on_failed(self, ev: Failed) -> None:
        self._fail(ev.error)

    def _control(self, msg: dict) -> None:
        if not self.attached and msg["type"] in ("ack", "stats"):
            return  # nobody to read them; `resumed` carries the figures a returning client needs
        try:
            self.out.put_control(msg)
        except QueueOverflow:
            self._fail(ProtocolError("too_slow", "the client does not read its messages"))

    def _set_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self._do(Close(code, reason))

    # ------------------------------------------------------------------ client frames
    def _on_received(self, ev: Received) -> None:
        """One client frame. Errors become `error` messages (fatal ones before `ready`)."""
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
            msg = parse_client_message(ev.data)
            if self.state == "handshake":
                if not isinstance(msg, Hello):
                    raise ProtocolError("bad_state", "the first message must be hello", fatal=True)
                self._hello(msg)
            else:
                self._dispatch(msg)
            self.rejected_in_a_row = 0
        except ProtocolError as err:
            self._refuse(err)

    def _refuse(self, err: ProtocolError) -> None:
        if self.state in ("handshake", "opening"):
            err.fatal = True  # no session to go on with
        self._fail(err)

    def _dispatch(self, msg: ClientMessage) -> None:
        if isinstance(msg, Hello):
            raise ProtocolError("bad_state", "hello was already accepted")
        if isinstance(msg, Ack):
            if self.replay is not None:
                self.replay.ack(msg.sample, msg.frame)
            return
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
            if self.mode == Mode.LISTEN:
                raise ProtocolError("bad_state", "listeners cannot flush")
            if self.state == "flushing":
                raise ProtocolError("bad_state", "flush already sent")
            self.state = "flushing"
            self._do(FlushStream())

    def _audio(self, msg: Audio) -> None:
        if not Mode(self.mode).encodes:
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
        self._do(PushAudio(msg.seq, msg.pcm))

    def _codes(self, msg: Codes) -> None:
        if self.mode != Mode.DECODE:
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
        self._do(PushCodes(msg.frame, msg.codes))

    # ------------------------------------------------------------------ handshake
    # hello -> [ClaimRoom -> RoomClaimed ->] OpenStream -> StreamOpened [-> OpenRoom -> RoomOpened] -> ready
    # listen: hello -> JoinRoom -> RoomJoined [-> AttachListener -> ListenerAttached] -> ready, room
    def _hello(self, hello: Hello) -> None:
        cfg = self.config
        if hello.resume is not None:  # the server takes resumes before a Session exists
            raise ProtocolError("bad_state", "a resume must be the first message of a connection")
        if hello.mode == Mode.LISTEN:
            self._hello_listen(hello)
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
        if hello.mode == Mode.PUBLISH and "audio" in want:
            raise ProtocolError("bad_field", "a publisher can only want codes (its own)")
        self.hello = hello
        self.want_audio, self.want_codes = "audio" in want, "codes" in want
        self.state = "opening"
        self._preset, self._bandwidth, self._want = preset, bandwidth, want
        self._spec = StreamSpec(
            hello.mode, hello.sample_rate, hello.format, preset, bandwidth, want_audio=self.want_audio
        )
        if hello.mode == Mode.PUBLISH:
            self._do(ClaimRoom(hello.room))  # room_busy (cluster-wide in a cluster)
        else:
            self._do(OpenStream(self._spec))

    def _on_room_claimed(self, ev: RoomClaimed) -> None:
        self._claimed = True
        self._do(OpenStream(self._spec))

    def _on_stream_opened(self, ev: StreamOpened) -> None:
        self.info = ev.info
        if self.mode == Mode.PUBLISH:
            self._do(OpenRoom(self.hello.room, self._room_params(self._preset, self._bandwidth)))
        else:
            self._go(self._preset, self._bandwidth, self._want)

    def _on_room_opened(self, ev: RoomOpened) -> None:
        self.room = ev.room
        self._go(self._preset, self._bandwidth, self._want)

    def _hello_listen(self, hello: Hello) -> None:
        """Listeners take the room's preset and bandwidth (hello.latency/bandwidth are ignored)."""
        want = hello.want if hello.want is not None else DEFAULT_WANT[Mode.LISTEN]
        self.hello = hello
        self.want_audio, self.want_codes = "audio" in want, "codes" in want
        self._want = want
        self.state = "opening"
        self._do(JoinRoom(hello.room))

    def _on_room_joined(self, ev: RoomJoined) -> None:
        self.room = ev.room
        if self.want_audio:
            self._attaching = True
            self._do(AttachListener(ev.room.publisher.sid, self.hello.sample_rate, self.hello.format))
        else:
            self._listening()

    def _on_listener_attached(self, ev: ListenerAttached) -> None:
        self._attaching = False
        self._listening()

    def _listening(self) -> None:
        p = self.room.params
        self.info = EngineInfo(
            n_q=p["n_q"],
            latency_ms=p["encoder_latency_ms"] + (p["decoder_latency_ms"] if self.want_audio else 0.0),
            encoder_latency_ms=p["encoder_latency_ms"],
            decoder_latency_ms=p["decoder_latency_ms"],
            lookahead_frames=p["lookahead_frames"],
            frame_size=self.codec.frame_size,
        )
        self._go(p["latency"], p["bandwidth"], self._want)
        if self.state == "ready":
            self._control(self.room.room_message())  # before any frame: what the codes mean

    def _on_step_failed(self, ev: StepFailed) -> None:
        if self._attaching:  # joined, but no decoder slot to listen with
            self._attaching = False
            self._do(LeaveRoom(self.room.name))
        self._refuse(ev.error)

    def _go(self, preset: str, bandwidth: float | None, want: tuple[str, ...]) -> None:
        if self.close_code is not None:
            return
        self.state = "ready"
        self._control(self._ready(preset, bandwidth, want))
        if self.metrics is not None:
            self.metrics.sessions_opened.labels(self.mode).inc()
        self.log.info(
            "ready: %s, %d Hz %s, preset %s, client %r", self.mode, self.rate, self.hello.format, preset,
            self.hello.client,
        )  # fmt: skip
        if self.hello.stats_interval_ms:
            self.stats_on = True
            self._do(StartStats(self.hello.stats_interval_ms))

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
            "resume_token": self.token,  # absent when the server does not keep sessions for a resume
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
            "node": self.node,  # in a cluster: the daemon holding this session (resume: `?node=`)
            "limits": {
                "max_message_bytes": cfg.max_message_bytes,
                "max_chunk_ms": cfg.max_chunk_ms,
                "max_backlog_ms": cfg.max_backlog_ms,
                "max_output_queue_ms": cfg.max_output_queue_ms,
                "max_messages_per_second": cfg.max_messages_per_second,
                "message_burst": cfg.message_burst,
                "idle_timeout_s": cfg.idle_timeout_s,
                "resume_grace_s": cfg.resume_grace_s if self.token else 0.0,
                "max_unacked_ms": cfg.resume_max_unacked_ms if self.token else 0.0,
            },
        }

    # ------------------------------------------------------------------ worker output
    def _on_result(self, ev: Result) -> None:
        r: StepResult = ev.result
        if self.state == "closed":
            return
        if r.error is not None:
            text = {
                "server_busy": "the server ran out of memory and shed this session; retry later",
            }.get(r.error, "the codec step failed for this session")
            self._fail(ProtocolError(r.error, text))
            return
        self.consumed += r.consumed
        if r.seq_end is not None:
            self.seq_end = r.seq_end
        pin = self._pin_output
        sent = False
        if r.codes is not None:
            self.frames_out += r.codes.shape[-1]
            if self.want_codes:
                msg = {"type": "codes", "frame": r.frame, "codes": r.codes, "seq_end": r.seq_end}
                self.out.put_data(msg, r.codes.shape[-1] * 1000.0 / self.codec.frame_rate, pinned=pin)
                sent = True
            if self.room is not None:
                self._do(BroadcastCodes(self.room, r.frame, r.codes, 1000.0 / self.codec.frame_rate))
        if r.audio is not None:
            self.samples_out += r.audio.size
            msg = {"type": "audio", "sample": r.sample, "pcm": r.audio, "seq_end": r.seq_end}
            self.out.put_data(msg, 1000.0 * r.audio.size / self.rate, pinned=pin)
            sent = True
        if r.listeners and self.room is not None:
            self._do(SendRoomAudio(self.room, r.listeners))
        if r.done is not None:
            self.state = "done"
            reason = {"reason": "shutting_down"} if self.shutting_down else {}
            self.done_msg = {"type": "done", **r.done, "dropped": self.out.dropped, **reason}
            self._control(dict(self.done_msg))
            if self.room is not None and self.mode == Mode.PUBLISH:
                self._do(EndRoom(self.room.name, "publisher_done"))
        elif not sent and r.seq_end is not None:
            self._control({"type": "ack", "seq_end": r.seq_end})

    @property
    def _pin_output(self) -> bool:
        """Output made while the connection is down is owed to the client in full (it is bounded by the
        input already accepted: max_backlog_ms plus the codec's tail)."""
        return not self.attached and self.replay is not None

    # listener side of a room
    def _on_room_data(self, ev: RoomData) -> None:
        msg = ev.msg
        if msg["type"] == "codes":
            self.frames_out += msg["codes"].shape[-1]
        else:
            self.samples_out += msg["pcm"].size
        self.out.put_data(msg, ev.duration_ms)  # never pinned: a room does not wait for a listener

    def _on_room_ended(self, ev: RoomEnded) -> None:
        if self.state == "closed":
            return
        self.state = "done"
        self.room = None
        self.done_msg = {
            "type": "done",
            "reason": "shutting_down" if self.shutting_down else ev.reason,
            "samples_out": self.samples_out,
            "frames_out": self.frames_out,
            "dropped": self.out.dropped,
        }
        self._control(dict(self.done_msg))
        if not self.shutting_down:  # (a server that stops closes every session with 1001 itself)
            self._set_close(CLOSE_ROOM_ENDED, ev.reason)

    # ------------------------------------------------------------------ stats
    def _on_stats_due(self, ev: StatsDue) -> None:
        self._control(self.stats_message())

    def stats_message(self) -> dict:
        figures = self.figures()
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
            "output_queue_ms": round(self.out.data_ms + self.out.pinned_ms, 3),
            "dropped": self.out.dropped,
            "errors": dict(self.errors),
            "worker_tick_ms": round(figures.worker_tick_ms, 3),
            "worker_batch": figures.worker_batch,
            "sessions": figures.sessions,
        }

    # ------------------------------------------------------------------ resume
    def sending(self, msg: dict) -> None:
        """The writer hands `msg` to the socket: keep data until acknowledged, remember `done`."""
        if self.replay is not None and msg["type"] in ("audio", "codes"):
            kind, start, end = span(msg)
            unit_ms = 1000.0 / (self.rate if kind == "audio" else self.codec.frame_rate)
            self.replay.record(msg, (end - start) * unit_ms)
        elif msg["type"] == "done":
            self.done_sent = True

    def check_resume(self, hello: Hello) -> None:
        """ProtocolError(resume_failed) unless a client at `hello`'s positions can go on with this session."""
        if self.replay is None or self.state not in ("ready", "flushing", "done"):
            raise ProtocolError("resume_failed", "this session cannot be resumed")
        self.replay.check(hello.sample, hello.frame)

    def resume_front(self, hello: Hello) -> list[tuple[dict, float]]:
        """What a returning client gets before anything still queued: `resumed`, the output it has not
        received (from its positions), and `done` again if it was sent on the lost connection."""
        items, start = self.replay.take_from(hello.sample, hello.frame)
        resumed = {
            "type": "resumed",
            "session": self.sid,
            "mode": self.mode,
            "state": self.state,
            "next_frame" if self.mode == Mode.DECODE else "next_seq": self.next_seq,
            "seq_end": self.seq_end,
            "sample": start["audio"],
            "frame": start["codes"],
            "samples_out": self.samples_out,
            "frames_out": self.frames_out,
            "dropped": self.out.dropped,
            "resume_token": self.token,
        }
        if self.mode == Mode.LISTEN:
            del resumed["next_seq"]  # a listener sends no input
        front = [(resumed, 0.0), *items]
        if self.done_sent and self.done_msg is not None:
            front.append((dict(self.done_msg), 0.0))
            self.done_sent = False
        return front

    # ------------------------------------------------------------------ server shutdown, teardown
    def _on_shutdown(self, ev: Shutdown) -> None:
        self.shutting_down = True
        if self.state in ("handshake", "opening"):
            self._fail(ProtocolError("shutting_down", "the server is stopping"))
        elif self.state == "ready" and self.mode != Mode.LISTEN:
            self.state = "flushing"
            self._do(FlushStream())

    def _on_closed(self, ev: Closed) -> None:
        """Free the worker slots, leave or end the room. Idempotent."""
        if self.state == "closed":
            return
        mode, room = self.mode, self.room
        self.state = "closed"
        if self.stats_on:
            self.stats_on = False
            self._do(StopStats())
        if mode == Mode.LISTEN and room is not None:
            self._do(LeaveRoom(room.name))
            if self.want_audio:
                self._do(DetachListener(room.publisher.sid))
        elif mode is not None:
            self._do(CloseStream())
            if mode == Mode.PUBLISH and room is not None:
                self._do(EndRoom(room.name, "publisher_left"))
            elif mode == Mode.PUBLISH and self._claimed:
                self._do(UnclaimRoom(self.hello.room))


_HANDLERS: dict[type, Callable[[SessionMachine, Event], None]] = {
    Received: SessionMachine._on_received,
    RoomClaimed: SessionMachine._on_room_claimed,
    StreamOpened: SessionMachine._on_stream_opened,
    RoomOpened: SessionMachine._on_room_opened,
    RoomJoined: SessionMachine._on_room_joined,
    ListenerAttached: SessionMachine._on_listener_attached,
    StepFailed: SessionMachine._on_step_failed,
    Result: SessionMachine._on_result,
    RoomData: SessionMachine._on_room_data,
    RoomEnded: SessionMachine._on_room_ended,
    Failed: SessionMachine._on_failed,
    StatsDue: SessionMachine._on_stats_due,
    Shutdown: SessionMachine._on_shutdown,
    Closed: SessionMachine._on_closed,
}
