"""What sessions exchange with the worker: the stream they ask for, the numbers they get back when it opens,
what each tick produced for it, and the refusal when no slot is free."""

from __future__ import annotations

import concurrent.futures
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..modes import Mode

CODEC_RATE = 16000
OVERHEAD_TICKS = 1000


class TickFigures:
    """What a worker reports of its ticks (/healthz, session stats), whichever process steps them."""

    def __init__(self) -> None:
        self.ticks = 0
        self.last_tick_ms = 0.0
        self.max_tick_ms = 0.0
        # Per tick: milliseconds outside the engines' step/flush calls (gathering input, resampling, slicing,
        # bookkeeping) = the server's own overhead. The last OVERHEAD_TICKS ticks that stepped something.
        self.overhead_ms: deque[float] = deque(maxlen=OVERHEAD_TICKS)
        self.last_batch = 0


class WorkerFull(RuntimeError):
    """No free encoder/decoder slot for this preset."""


def answered(result: object = None, error: BaseException | None = None) -> concurrent.futures.Future:
    """A future that is already done: calls answered at once where another worker answers later."""
    fut: concurrent.futures.Future = concurrent.futures.Future()
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
    return fut


@dataclass(frozen=True)
class StreamSpec:
    """What a session asks of the engine (fixed at `hello`)."""

    mode: Mode  # listeners attach to a publisher or a relay stream
    sample_rate: int
    fmt: str  # wire PCM format of the audio the session sends/receives: s16 | f32
    preset: str
    bandwidth: float | None = None
    want_audio: bool = False  # loopback: decode the codes back to audio
    room_audio: bool = False  # publish: start the room decoder now (a listener wants audio)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))  # a plain string is accepted, an unknown one is not

    @property
    def decodes(self) -> bool:
        """Its own decoder slot (not the room's): decode mode, or loopback that wants audio back."""
        return self.mode == Mode.DECODE or (self.mode == Mode.LOOPBACK and self.want_audio)


@dataclass(frozen=True)
class EngineInfo:
    """The numbers a client needs, answered when a stream is opened."""

    n_q: int
    latency_ms: float  # algorithmic latency of this stream: codec + resamplers
    encoder_latency_ms: float
    decoder_latency_ms: float
    lookahead_frames: int
    frame_size: int


@dataclass
class StepResult:
    """What one tick produced for one stream (handed to the event loop)."""

    seq_end: int | None = None  # last input seq (audio) or frame (decode: last frame index) now consumed
    consumed: int = 0  # input units consumed this tick: client-rate samples, or frames in decode mode
    frame: int = 0  # index of codes[:, 0]
    codes: np.ndarray | None = None  # (n_q, F) uint16
    sample: int = 0  # client-rate index of audio[0]
    audio: np.ndarray | None = None  # wire dtype, client rate
    listeners: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)  # room audio per listener
    done: dict[str, int] | None = None  # counters, once the flush has been processed
    error: str | None = None  # "internal" (the step raised) or "server_busy" (shed on out-of-memory)
