"""Per-stream input queues: what the event loop pushes (under the worker's lock), what one tick takes of it
(whole messages up to max_step_ms, then a flush), and how taken input becomes engine input."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..modes import Mode
from ..protocol import pcm_to_float
from .api import StreamSpec

if TYPE_CHECKING:
    from .stream import Listener, Stream

LIVE_S = 0.2  # a stream that pushed input this recently is expected to push again soon (batch gathering)
AUDIO, CODES, FLUSH = "audio", "codes", "flush"


class InputQueue:
    """One stream's pending messages: (AUDIO, pcm, seq) | (CODES, codes, frame) | (FLUSH,); a tick takes at
    most `cap` input units of them (see `step_cap`)."""

    __slots__ = ("items", "cap", "last_push")

    def __init__(self, cap: int) -> None:
        self.items: deque[tuple] = deque()
        self.cap = cap
        self.last_push = 0.0  # monotonic time of the last input, to tell streams that are sending

    def __bool__(self) -> bool:
        return bool(self.items)

    def push(self, item: tuple, now: float) -> None:
        self.items.append(item)
        self.last_push = now

    def clear(self) -> None:
        self.items.clear()

    def sending(self, now: float) -> bool:
        return now - self.last_push < LIVE_S


@dataclass
class Take:
    """One stream's input of one tick, and what the tick computes from it on the way through the engines."""

    stream: Stream
    audio: list[np.ndarray]
    codes: list[np.ndarray]
    seq_end: int | None
    flush: bool
    x16: np.ndarray | None = None  # encoder input (16 kHz) of this tick
    codes_in: np.ndarray | None = None  # decoder input of this tick
    dec_slot: int | None = None
    audio16: np.ndarray | None = None  # decoder output (16 kHz) of this tick
    # publish, relay: as of this tick's take (under the lock), the room decoder slot, whether it is still to be
    # reset, and the listeners that want audio (the event loop may attach or detach them meanwhile)
    room_slot: int | None = None
    room_reset: bool = False
    listeners: dict[int, Listener] | None = None


def step_cap(spec: StreamSpec, max_step_ms: float, model_config: Any) -> int:
    """The most input one tick takes of a stream (unless a single message is bigger): frames for streams fed
    codes, client-rate samples for the others."""
    if spec.mode in (Mode.DECODE, Mode.RELAY):
        return max(1, int(max_step_ms * model_config.frame_rate / 1000))
    return max(1, int(max_step_ms * spec.sample_rate / 1000))


def take(st: Stream, max_chunks: int) -> Take:
    """Pop this tick's input (called under the lock): whole messages up to the queue's cap, at most
    `max_chunks` of them (0: any number), then a flush."""
    pending, cap = st.inputs.items, st.inputs.cap
    audio: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    seq_end, taken, flush = None, 0, False
    while pending:
        item = pending[0]
        if max_chunks and len(audio) + len(codes) >= max_chunks:
            break  # (the flush counts as a message here: it then gets a tick of its own)
        if item[0] == FLUSH:
            pending.popleft()
            flush = True
            break
        n = item[1].shape[-1]
        if taken and taken + n > cap:
            break
        pending.popleft()
        (audio if item[0] == AUDIO else codes).append(item[1])
        taken += n
        seq_end = item[2] if item[0] == AUDIO else item[2] + n - 1
    t = Take(st, audio, codes, seq_end, flush)
    if st.spec.mode.feeds_room:
        t.room_slot, t.room_reset, t.listeners = st.room_dec_slot, st.room_dec_reset, dict(st.listeners)
    return t


def awaited(st: Stream, now: float) -> bool:
    """(Under the lock) an open stream that is sending but has nothing pending: a tick now would miss it."""
    return not st.inputs and st.opened and not st.done and not st.failed and st.inputs.sending(now)


def encoder_input(t: Take) -> int:
    """The take's audio at 16 kHz (into `t.x16`, with the input resampler's tail on a flush); counts it on
    the stream and returns the client-rate samples consumed."""
    st = t.stream
    if len(t.audio) == 1:  # the usual case: one message, no concatenation
        pcm = pcm_to_float(t.audio[0])
    elif t.audio:
        pcm = np.concatenate([pcm_to_float(a) for a in t.audio])
    else:
        pcm = np.zeros(0, np.float32)
    st.n_in += pcm.size
    x16 = st.in_rs.process(pcm)
    if t.flush:
        x16 = np.concatenate([x16, st.in_rs.flush()])
    st.n16_in += x16.size
    t.x16 = x16
    return pcm.size


def codes_taken(t: Take) -> np.ndarray | None:
    """The code messages a decode or relay stream took this tick, as one (n_q, F) int64 array."""
    return np.concatenate(t.codes, axis=-1).astype(np.int64) if t.codes else None
