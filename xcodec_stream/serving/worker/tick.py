"""One tick of the worker thread: settle the opens whose engines are ready, give back closed streams' slots,
take every ready stream's input, run ONE step (then the flushes) per encoder/decoder instance over all of them,
and shape the results.

Faults: a step that raises fails the streams of that step (`internal`) and the tick goes on. A step that runs
out of memory sheds the newest half of its streams (`server_busy`) and, when the engine declares
`atomic_steps` (a step that raises leaves its slots as they were), retries with the rest.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

from ..modes import Mode
from . import inputs, outputs
from .api import StepResult
from .engines import Engines
from .inputs import Take
from .slots import SlotPool, reset_decoder, reset_stream
from .stream import Stream

log = logging.getLogger("xcodec_stream.worker")

OOM_ERRORS: tuple[type[BaseException], ...] = (MemoryError, torch.cuda.OutOfMemoryError)

Results = dict[int, StepResult]


def all_or_nothing(engine: Any, slots: list[int]) -> AbstractContextManager:
    """The engine's `atomic(slots)` (a step + flush that raises leaves the slots as they were, so the rest of
    an out-of-memory batch can be retried), or nothing for engines without one."""
    atomic = getattr(engine, "atomic", None)
    return atomic(slots) if atomic is not None else nullcontext()


class TickRunner:
    """Runs ticks over the worker's streams and waiting opens (shared with the worker's thread-safe API, and
    guarded by its lock `cond`). Called by the worker thread only."""

    def __init__(
        self,
        model: Any,
        engines: Engines,
        slots: SlotPool,
        cond: threading.Condition,
        streams: dict[int, Stream],
        opens: list[tuple[Stream, concurrent.futures.Future]],
        *,
        max_chunks_per_step: int,
    ) -> None:
        self.model = model
        self.engines = engines
        self.slots = slots
        self.cond = cond
        self.streams = streams
        self.opens = opens  # until settled by a tick
        self.max_chunks_per_step = max_chunks_per_step
        self.engine_s = 0.0  # this tick's time in the engines' step/flush calls
        self.last_batch = 0  # streams stepped by the last tick

    # ---------------------------------------------------------------- picking the work
    def _open_due(self, st: Stream, fut: concurrent.futures.Future) -> bool:
        """(Under the lock) whether this tick settles an open: its engine is built or failed, or nobody
        waits for it any more. Otherwise it waits for its preset's build."""
        return st.closing or fut.cancelled() or self.engines.settled(st.spec.preset)

    def has_work(self) -> bool:
        """(Under the lock) whether a tick now would do anything."""
        return any(self._open_due(st, fut) for st, fut in self.opens) or any(
            st.closing or (st.inputs and st.opened and not st.failed) for st in self.streams.values()
        )

    def run(self) -> list[tuple[int, StepResult]]:
        """One tick: the results to emit (possibly none)."""
        self.engine_s = 0.0
        with self.cond:
            opens, waiting = [], []
            for st, fut in self.opens:
                (opens if self._open_due(st, fut) else waiting).append((st, fut))
            self.opens[:] = waiting
            closing = [st for st in self.streams.values() if st.closing]
            for st in closing:
                del self.streams[st.sid]
        for st in closing:
            self._release(st)
        for st, fut in opens:
            self._open(st, fut)
        with self.cond:
            takes = [
                inputs.take(st, self.max_chunks_per_step)
                for st in self.streams.values()
                if st.opened and not st.failed and st.inputs
            ]
        self.last_batch = len(takes)
        return self._process(takes) if takes else []

    def _release(self, st: Stream) -> None:
        with self.cond:
            self.slots.release(st)

    def _open(self, st: Stream, fut: concurrent.futures.Future) -> None:
        """Reset the stream's slots and answer its future. The future is marked running first: once that
        succeeds, the event loop can no longer cancel it, so setting its result cannot raise."""
        if st.closing:
            fut.cancel()
            return
        if not fut.set_running_or_notify_cancel():  # cancelled: nobody waits for this stream, free it now
            with self.cond:
                st.closing = True
                if self.streams.get(st.sid) is st:
                    del self.streams[st.sid]
            self._release(st)
            return
        try:
            with self.cond:
                preset = st.spec.preset
                enc, dec = self.engines.enc.get(preset), self.engines.dec.get(preset)
                error = self.engines.errors.get(preset)
            if enc is None:
                raise RuntimeError(f"building the {preset!r} engine failed: {error}") from error
            reset_stream(enc, dec, st)
            info = outputs.stream_info(self.model.config, enc, dec, st)
        except Exception as exc:
            log.exception("opening stream %d failed", st.sid)
            st.failed = True
            fut.set_exception(exc)
            return
        st.opened = True
        fut.set_result(info)

    # ---------------------------------------------------------------- the engine steps
    def _process(self, takes: list[Take]) -> list[tuple[int, StepResult]]:
        res = {t.stream.sid: StepResult(seq_end=t.seq_end) for t in takes}
        by_preset: dict[str, list[Take]] = {}
        for t in takes:
            by_preset.setdefault(t.stream.spec.preset, []).append(t)
        for preset, group in by_preset.items():
            enc, dec = self.engines.enc[preset], self.engines.dec[preset]  # built before its streams opened
            codes = self._encode(enc, group, res)
            self._decode(dec, enc, group, codes, res)
            for t in group:
                if not t.stream.failed:
                    sid = t.stream.sid
                    outputs.finish(t, codes.get(sid), res[sid])
        return list(res.items())

    def _fail(self, group: list[Take], res: Results, what: str) -> None:
        log.exception("%s failed for streams %s", what, [t.stream.sid for t in group])
        for t in group:
            t.stream.failed = True
            res[t.stream.sid] = StepResult(error="internal")

    def _guarded(
        self, engine: Any, group: list[Take], run: Callable[[list[Take]], Any], res: Results, what: str
    ) -> tuple[list[Take], Any]:
        """`run(group)` -> (takes that went through, its result). An exception fails the group; running out of
        memory sheds the newest half of it (at least one) and retries with the rest if the engine's steps
        are atomic, else fails the rest too (their slots may be half-stepped)."""
        active = list(group)
        while active:
            t0 = time.perf_counter()
            try:
                return active, run(active)
            except OOM_ERRORS:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                active.sort(key=lambda t: t.stream.sid)  # session ids grow: the newest come last
                n_shed = max(1, len(active) // 2)
                shed, active = active[-n_shed:], active[:-n_shed]
                log.warning(
                    "%s ran out of memory with %d streams: shedding %s",
                    what,
                    len(active) + n_shed,
                    [t.stream.sid for t in shed],
                )
                for t in shed:
                    t.stream.failed = True
                    res[t.stream.sid] = StepResult(error="server_busy")
                if active and not getattr(engine, "atomic_steps", False):
                    self._fail(active, res, f"{what} (after out-of-memory, engine steps not atomic)")
                    return [], None
            except Exception:
                self._fail(active, res, what)
                return [], None
            finally:
                self.engine_s += time.perf_counter() - t0
        return [], None

    def _encode(self, enc: Any, group: list[Take], res: Results) -> dict[int, np.ndarray]:
        """Input resampling, one encoder step for the whole group, then the encoder flushes."""
        users = [t for t in group if t.stream.enc_slot is not None]
        for t in users:
            res[t.stream.sid].consumed = inputs.encoder_input(t)

        def run(takes: list[Take]) -> tuple[dict, dict]:
            with all_or_nothing(enc, [t.stream.enc_slot for t in takes]):
                chunks = {t.stream.enc_slot: torch.from_numpy(t.x16) for t in takes if t.x16.size}
                stepped = enc.step_slots(chunks) if chunks else {}
                flushing = [t.stream.enc_slot for t in takes if t.flush]
                return stepped, (enc.flush_slots(flushing) if flushing else {})

        out: dict[int, np.ndarray] = {}
        if not users:
            return out
        done, result = self._guarded(enc, users, run, res, "encoder step")
        for t in done:
            codes = outputs.slot_codes(*result, t.stream.enc_slot)
            if codes is not None:
                out[t.stream.sid] = codes
        return out

    def _decode(
        self, dec: Any, enc: Any, group: list[Take], codes: dict[int, np.ndarray], res: Results
    ) -> None:
        """One decoder step for loopback, decode and room streams of the group, then the decoder flushes."""
        users: list[Take] = []
        for t in group:
            st = t.stream
            if st.failed:
                continue
            if st.spec.mode == Mode.DECODE:
                c = inputs.codes_taken(t)
                st.n_in += 0 if c is None else c.shape[-1]
                res[st.sid].consumed = 0 if c is None else c.shape[-1]
                slot = st.dec_slot
            elif st.spec.mode == Mode.LOOPBACK and st.dec_slot is not None:
                c, slot = codes.get(st.sid), st.dec_slot
            elif st.spec.mode.feeds_room and t.room_slot is not None:
                if t.room_reset:  # from the take's snapshot: the flag is only ever cleared here
                    # a relay's decoder starts like the publisher's room decoder (same lead): same audio
                    reset_decoder(dec, t.room_slot, enc)
                    with self.cond:
                        st.room_dec_reset = False
                if st.spec.mode == Mode.PUBLISH:
                    c = codes.get(st.sid)
                else:  # codes that came from another daemon's publisher (serving.cluster)
                    c = inputs.codes_taken(t)
                slot = t.room_slot
            else:
                continue
            t.codes_in, t.dec_slot = c, slot
            users.append(t)

        def run(takes: list[Take]) -> tuple[dict, dict]:
            with all_or_nothing(dec, [t.dec_slot for t in takes]):
                chunks = {
                    t.dec_slot: torch.from_numpy(np.ascontiguousarray(t.codes_in))
                    for t in takes
                    if t.codes_in is not None and t.codes_in.shape[-1]
                }
                stepped = dec.step_slots(chunks) if chunks else {}
                flushing = [t.dec_slot for t in takes if t.flush]
                return stepped, (dec.flush_slots(flushing) if flushing else {})

        if not users:
            return
        done, result = self._guarded(dec, users, run, res, "decoder step")
        for t in done:
            t.audio16 = outputs.slot_audio(*result, t.dec_slot)
