"""One worker stream's state: its slots, resamplers, input queue, counters and (publish, relay) the room's
decoder slot and listeners."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...streaming.resample import StreamingResampler
from .api import StreamSpec
from .inputs import InputQueue


@dataclass
class Listener:
    sid: int
    resampler: StreamingResampler
    fmt: str
    n_out: int = 0


@dataclass
class Stream:
    sid: int
    spec: StreamSpec
    enc_slot: int | None
    dec_slot: int | None
    in_rs: StreamingResampler | None
    out_rs: StreamingResampler | None
    inputs: InputQueue
    opened: bool = False
    closing: bool = False
    failed: bool = False
    done: bool = False
    n_in: int = 0  # client-rate samples (or frames, decode) consumed
    n16_in: int = 0  # 16 kHz samples fed to the encoder
    n16_out: int = 0  # 16 kHz samples taken from the decoder
    n_out: int = 0  # client-rate samples sent
    frames_out: int = 0
    # publish only: the room's decoder slot and the listeners that want audio. The slot is allocated (with
    # room_dec_reset) by `open` or `attach_listener` on the event loop: both read and written under the lock.
    room_dec_slot: int | None = None
    room_dec_reset: bool = False  # the slot still needs its reset before its first step
    listeners: dict[int, Listener] = field(default_factory=dict)
    room16_out: int = 0
