"""The worker thread and its thread-safe entry points: each tick runs ONE step per encoder/decoder instance over
every pending session. A composition of the slot pool, the input queues, the tick runner and the output
shaping (the sibling modules); this module owns the lock, the thread and its metrics."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...streaming.resample import StreamingResampler
from .api import CODEC_RATE, StepResult, StreamSpec, TickFigures, answered
from .engines import Engines
from .inputs import AUDIO, CODES, FLUSH, InputQueue, awaited, step_cap
from .slots import SlotPool
from .stream import Listener, Stream
from .tick import TickRunner

log = logging.getLogger("xcodec_stream.worker")


def percentile_ms(values: deque[float] | list[float], q: float) -> float:
    return round(float(np.percentile(list(values), q)), 3) if values else 0.0


class Worker(TickFigures):
    """Owns the codec's streaming engines; sessions push input from the event loop, results come back via `emit`.

    Thread-safe entry points (`open`, `push_*`, `flush`, `close`, `attach_listener`, `detach_listener`) only
    append under a lock and wake the thread; the thread gathers every stream's pending input (at most
    `max_step_ms` and `max_chunks_per_step` messages each), runs one `step_slots` per engine instance, and calls
    `emit(results)` once per tick from the worker thread (the server wraps it with `loop.call_soon_threadsafe`).
    Faults: see `tick`.

    Presets not preloaded: `open` runs on the event loop and the tick serves every live session, so neither
    builds an engine (see `engines`). `open` starts the preset's background build, and the stream waits, not
    opened, in `_opens`; the build's end wakes the tick, which then opens it (or fails it with the build's
    exception; the next `open` of that preset tries again). An open whose future was cancelled meanwhile (the
    session gave up) is dropped and its slots freed.
    """

    def __init__(
        self,
        model: Any,
        emit: Callable[[list[tuple[int, StepResult]]], None],
        *,
        capacity: int,
        max_step_ms: float = 500.0,
        max_chunks_per_step: int = 0,
        batch_wait_ms: float = 0.0,
        zero_crossings: int = 16,
        preload: tuple[str, ...] = (),
        torch_threads: int = 0,
        compile: str = "eager",
        observe: Callable[[float, int], None] | None = None,
    ) -> None:
        self.model = model
        self.emit = emit
        self.observe = observe  # (tick seconds, sessions stepped), from the worker thread
        self.max_step_ms = max_step_ms
        self.max_chunks_per_step = max_chunks_per_step
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.zero_crossings = zero_crossings
        self.preload = preload
        self.torch_threads = torch_threads
        self._cond = threading.Condition()
        self._engines = Engines(model, capacity, compile, self._cond)
        self._slots = SlotPool(capacity)
        self._streams: dict[int, Stream] = {}
        self._opens: list[tuple[Stream, concurrent.futures.Future]] = []  # until opened by a tick
        self._runner = TickRunner(
            model,
            self._engines,
            self._slots,
            self._cond,
            self._streams,
            self._opens,
            max_chunks_per_step=max_chunks_per_step,
        )
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        super().__init__()  # the tick figures, written by the worker thread only

    # What /healthz shows of engine processes, as a worker thread has them: it dies only with the daemon.
    dead: str | None = None
    restarts = 0

    @property
    def pids(self) -> list[int]:
        return []

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="xcodec-worker", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise RuntimeError(f"worker failed to start: {self._start_error}") from self._start_error

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # ---------------------------------------------------------------- thread-safe API
    def open(self, sid: int, spec: StreamSpec) -> concurrent.futures.Future:
        """Allocate slots now (WorkerFull if none); the returned future gets EngineInfo once the slot is reset,
        by the first tick after the preset's engines exist (a preset not built yet is built in the background)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if sid in self._streams:
                raise ValueError(f"stream {sid} already open")
            enc_slot, dec_slot, room_slot = self._slots.allocate(spec)
            st = Stream(
                sid,
                spec,
                enc_slot,
                dec_slot,
                self._resampler(spec.sample_rate, CODEC_RATE) if enc_slot is not None else None,
                self._resampler(CODEC_RATE, spec.sample_rate) if dec_slot is not None else None,
                InputQueue(step_cap(spec, self.max_step_ms, self.model.config)),
            )
            if room_slot is not None:
                st.room_dec_slot, st.room_dec_reset = room_slot, True
            self._streams[sid] = st
            self._opens.append((st, fut))
            build = self._engines.claim_build(spec.preset)
            self._cond.notify()
        if build:  # never under the lock, nor in the tick: see `engines`
            self._engines.start_build(spec.preset)
        return fut

    def push_audio(self, sid: int, seq: int, pcm: np.ndarray) -> None:
        self._push(sid, (AUDIO, pcm, seq))

    def push_codes(self, sid: int, frame: int, codes: np.ndarray) -> None:
        self._push(sid, (CODES, codes, frame))

    def flush(self, sid: int) -> None:
        self._push(sid, (FLUSH,))

    def close(self, sid: int) -> None:
        """Forget the stream: pending input is dropped, its slots are freed by the worker thread."""
        with self._cond:
            st = self._streams.get(sid)
            if st is not None:
                st.closing = True
                st.inputs.clear()
                self._cond.notify()

    def attach_listener(
        self, publisher: int, sid: int, sample_rate: int, fmt: str
    ) -> concurrent.futures.Future:
        """A room listener that wants audio: the room decoder starts (reset) on its first use. Raises WorkerFull
        when the room needs a decoder slot and none is free; the future returned is done (an engine in another
        process answers through it later: `EngineProcess`)."""
        with self._cond:
            st = self._streams.get(publisher)
            if st is not None and not st.closing:
                if st.room_dec_slot is None:
                    st.room_dec_slot, st.room_dec_reset = self._slots.allocate_room(st.spec.preset), True
                st.listeners[sid] = Listener(sid, self._resampler(CODEC_RATE, sample_rate), fmt)
        return answered()

    def detach_listener(self, publisher: int, sid: int) -> None:
        with self._cond:
            st = self._streams.get(publisher)
            if st is not None:
                st.listeners.pop(sid, None)

    def engine_info(self, preset: str) -> dict[str, float] | None:
        """Latencies of a preset's engines if already created (for /healthz)."""
        with self._cond:
            enc, dec = self._engines.enc.get(preset), self._engines.dec.get(preset)
        if enc is None:
            return None
        return {"encoder_ms": float(enc.latency_ms), "decoder_ms": float(dec.latency_ms)}

    @property
    def presets_loaded(self) -> list[str]:
        with self._cond:
            return sorted(self._engines.enc)

    def _push(self, sid: int, item: tuple) -> None:
        with self._cond:
            st = self._streams.get(sid)
            if st is None or st.closing:
                return
            st.inputs.push(item, time.monotonic())
            self._cond.notify()

    def _resampler(self, a: int, b: int) -> StreamingResampler:
        return StreamingResampler(a, b, zero_crossings=self.zero_crossings)

    # ---------------------------------------------------------------- the thread
    def _run(self) -> None:
        try:
            if self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            self._engines.preload(self.preload)
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._runner.has_work())
                if self._stopping:
                    return
            if self.batch_wait_s:
                self._gather()
            t0 = time.perf_counter()
            try:
                with torch.inference_mode():
                    self._tick()
            except Exception:  # a bug outside the guarded engine calls: fail what was in flight, go on
                log.exception("worker tick failed")
            dt = 1000 * (time.perf_counter() - t0)
            if self.last_batch:
                self.overhead_ms.append(dt - 1000 * self._runner.engine_s)
            self.ticks += 1
            self.last_tick_ms = dt
            self.max_tick_ms = max(self.max_tick_ms, dt)
            if self.observe is not None:
                self.observe(dt / 1000.0, self.last_batch)

    def _tick(self) -> None:
        try:
            results = self._runner.run()
        finally:  # a tick that raised still counts what it stepped
            self.last_batch = self._runner.last_batch
        if results:
            self.emit(results)

    def _gather(self) -> None:
        """Wait (at most batch_wait_ms) until every stream that is sending has input pending, so that one step
        serves them all instead of one step each: on a CPU the fixed cost of a step dominates.

        A stream that has input stays so until the tick takes it, so each wake-up (one per push) skips the
        streams already seen with input instead of scanning them all again: O(streams) per gather, not
        O(streams x pushes). (Only `close` takes input away; a stream closed meanwhile is not waited for.)"""
        deadline = time.monotonic() + self.batch_wait_s
        with self._cond:
            candidates = deque(self._streams.values())
            while not self._stopping:
                now = time.monotonic()
                while candidates and not awaited(candidates[0], now):
                    candidates.popleft()
                if not candidates or now >= deadline:
                    return
                self._cond.wait(deadline - now)
