"""Engine slots: per latency preset, the free encoder and decoder slots (`capacity` each), handed to a stream
when it opens or to a publisher's room decoder when a listener wants audio, and taken back when the stream
goes; and the resets that start a slot's new stream. Callers hold the worker's lock."""

from __future__ import annotations

from typing import Any

from ..modes import Mode
from .api import StreamSpec, WorkerFull
from .stream import Stream


class SlotPool:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.enc_free: dict[str, list[int]] = {}
        self.dec_free: dict[str, list[int]] = {}

    def pools(self, preset: str) -> tuple[list[int], list[int]]:
        """The preset's free encoder and decoder slots, lowest popped first."""
        if preset not in self.enc_free:
            self.enc_free[preset] = list(range(self.capacity - 1, -1, -1))
            self.dec_free[preset] = list(range(self.capacity - 1, -1, -1))
        return self.enc_free[preset], self.dec_free[preset]

    def allocate(self, spec: StreamSpec) -> tuple[int | None, int | None, int | None]:
        """(encoder slot, decoder slot, room decoder slot) for a new stream, each None where it needs none;
        WorkerFull (and nothing taken) if one is missing."""
        enc_free, dec_free = self.pools(spec.preset)
        need_enc, need_dec = spec.mode.encodes, spec.decodes
        if (need_enc and not enc_free) or (need_dec and not dec_free) or (spec.room_audio and not dec_free):
            raise WorkerFull(f"no free slot for latency preset {spec.preset!r}")
        enc = enc_free.pop() if need_enc else None
        dec = dec_free.pop() if need_dec else None
        room = dec_free.pop() if spec.room_audio else None
        return enc, dec, room

    def allocate_room(self, preset: str) -> int:
        """A decoder slot for a room (its publisher's stream had none yet)."""
        _, dec_free = self.pools(preset)
        if not dec_free:
            raise WorkerFull("no free decoder slot for the room")
        return dec_free.pop()

    def release(self, st: Stream) -> None:
        """Give back every slot the stream holds (once: they are cleared on the stream)."""
        enc_free, dec_free = self.pools(st.spec.preset)
        if st.enc_slot is not None:
            enc_free.append(st.enc_slot)
        for slot in (st.dec_slot, st.room_dec_slot):
            if slot is not None:
                dec_free.append(slot)
        st.enc_slot = st.dec_slot = st.room_dec_slot = None


def reset_decoder(dec: Any, slot: int, enc: Any | None) -> None:
    """A fresh decoder session; fed by `enc`'s codes, it starts with the lead that makes its steps fall when
    the codes arrive (no waiting for a step to fill)."""
    lead_for = getattr(enc, "lead_for", None)
    if lead_for is None:
        dec.reset(slot)
    else:
        dec.reset(slot, lead=lead_for(dec.step_frames))


def reset_stream(enc: Any, dec: Any, st: Stream) -> None:
    """A new stream in the stream's own slots (the room decoder is reset by the tick before its first step)."""
    if st.enc_slot is not None:
        enc.reset(st.enc_slot)
        enc.set_bandwidth(st.enc_slot, st.spec.bandwidth)
    if st.dec_slot is not None:
        reset_decoder(dec, st.dec_slot, enc if st.spec.mode == Mode.LOOPBACK else None)
