"""The batching engine thread: each tick runs ONE step per encoder/decoder instance over every pending session."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..streaming.resample import StreamingResampler
from .modes import Mode
from .protocol import float_to_pcm, pcm_to_float

log = logging.getLogger("xcodec_stream.worker")

CODEC_RATE = 16000
LIVE_S = 0.2  # a stream that pushed input this recently is expected to push again soon (batch gathering)
OOM_ERRORS: tuple[type[BaseException], ...] = (MemoryError, torch.cuda.OutOfMemoryError)


OVERHEAD_TICKS = 1000


def percentile_ms(values: deque[float] | list[float], q: float) -> float:
    return round(float(np.percentile(list(values), q)), 3) if values else 0.0


class WorkerFull(RuntimeError):
    """No free encoder/decoder slot for this preset."""


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


@dataclass
class _Listener:
    sid: int
    resampler: StreamingResampler
    fmt: str
    n_out: int = 0


@dataclass
class _Stream:
    sid: int
    spec: StreamSpec
    enc_slot: int | None
    dec_slot: int | None
    in_rs: StreamingResampler | None
    out_rs: StreamingResampler | None
    pending: deque = field(
        default_factory=deque
    )  # ("audio", pcm, seq) | ("codes", codes, frame) | ("flush",)
    opened: bool = False
    last_push: float = 0.0  # monotonic time of the last input, to tell streams that are sending
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
    listeners: dict[int, _Listener] = field(default_factory=dict)
    room16_out: int = 0


@dataclass
class _Take:
    stream: _Stream
    audio: list[np.ndarray]
    codes: list[np.ndarray]
    seq_end: int | None
    flush: bool
    x16: np.ndarray | None = None  # encoder input (16 kHz) of this tick
    codes_in: np.ndarray | None = None  # decoder input of this tick
    dec_slot: int | None = None
    audio16: np.ndarray | None = None  # decoder output (16 kHz) of this tick
    room_slot: int | None = None  # publish: the room decoder slot as of this tick's take (under the lock)
    room_reset: bool = False  # ... and whether it is still to be reset


class _Engines:
    """One encoder/decoder pair per latency preset, CAP slots each: built at start (`preload`) or, for another
    preset, on first use by a background thread (`Worker.open`). Its dicts are written under the worker's lock.
    """

    def __init__(self, model: Any, capacity: int, compile: str = "eager") -> None:
        self.model = model
        self.capacity = capacity
        self.compile = compile
        self.enc: dict[str, Any] = {}
        self.dec: dict[str, Any] = {}
        self.enc_free: dict[str, list[int]] = {}
        self.dec_free: dict[str, list[int]] = {}
        self.building: set[str] = set()  # presets a background thread is building now
        self.errors: dict[str, BaseException] = {}  # presets whose last build failed (until the next try)

    def pools(self, preset: str) -> tuple[list[int], list[int]]:
        if preset not in self.enc_free:
            self.enc_free[preset] = list(range(self.capacity - 1, -1, -1))
            self.dec_free[preset] = list(range(self.capacity - 1, -1, -1))
        return self.enc_free[preset], self.dec_free[preset]

    def build(self, preset: str) -> tuple[Any, Any]:
        """Construct a preset's pair (the caller stores it): reads the model, never changes it."""
        t0 = time.perf_counter()
        mode = self.compile  # "auto" is resolved by the engines (streaming.slots.resolve_compile)
        kw = {} if mode == "eager" else {"compile": mode}
        enc = self.model.streaming_encoder(batch_size=self.capacity, latency=preset, **kw)
        dec = self.model.streaming_decoder(batch_size=self.capacity, latency=preset, **kw)
        for engine in (enc, dec):  # compile every batch bucket now, not in a tick
            warm_up = getattr(engine, "warm_up", None)
            if warm_up is not None:
                warm_up()
        log.info(
            "engine %r ready (%s): %d slots, %.0f ms",
            preset,
            mode,
            self.capacity,
            1000 * (time.perf_counter() - t0),
        )
        return enc, dec


def _codes_taken(take: _Take) -> np.ndarray | None:
    """The code messages a decode or relay stream took this tick, as one (n_q, F) int64 array."""
    return np.concatenate(take.codes, axis=-1).astype(np.int64) if take.codes else None


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").numpy()
    return np.asarray(x)


def n_q_for(model_config: Any, bandwidth: float | None) -> int:
    if hasattr(model_config, "bandwidth_to_num_quantizers"):
        return int(model_config.bandwidth_to_num_quantizers(bandwidth))
    return int(model_config.num_quantizers)


def _reset_decoder(dec: Any, slot: int, enc: Any | None) -> None:
    """A fresh decoder session; fed by `enc`'s codes, it starts with the lead that makes its steps fall when
    the codes arrive (no waiting for a step to fill)."""
    lead_for = getattr(enc, "lead_for", None)
    if lead_for is None:
        dec.reset(slot)
    else:
        dec.reset(slot, lead=lead_for(dec.step_frames))


def _all_or_nothing(engine: Any, slots: list[int]) -> AbstractContextManager:
    """The engine's `atomic(slots)` (a step + flush that raises leaves the slots as they were, so the rest of
    an out-of-memory batch can be retried), or nothing for engines without one."""
    atomic = getattr(engine, "atomic", None)
    return atomic(slots) if atomic is not None else nullcontext()


class Worker:
    """Owns the codec's streaming engines; sessions push input from the event loop, results come back via `emit`.

    Thread-safe entry points (`open`, `push_*`, `flush`, `close`, `attach_listener`, `detach_listener`) only
    append under a lock and wake the thread; the thread gathers every stream's pending input (at most
    `max_step_ms` and `max_chunks_per_step` messages each), runs one `step_slots` per engine instance, and calls
    `emit(results)` once per tick from the worker thread (the server wraps it with `loop.call_soon_threadsafe`).

    Faults: a step that raises fails the streams of that step (`internal`) and the thread goes on. A step
    that runs out of memory sheds the newest half of its streams (`server_busy`) and, when the engine
    declares `atomic_steps` (a step that raises leaves its slots as they were), retries with the rest.

    Presets not preloaded: `open` runs on the event loop and the tick serves every live session, so neither
    builds an engine (seconds for the real model). `open` starts a background thread that builds the preset's
    pair (one build at a time, under `torch.inference_mode`; construction only reads the model, which the tick
    keeps stepping meanwhile), and the stream waits, not opened, in `_opens`; the build's end wakes the tick,
    which then opens it (or fails it with the build's exception; the next `open` of that preset tries again).
    An open whose future was cancelled meanwhile (the session gave up) is dropped and its slots freed.
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
        self._engines = _Engines(model, capacity, compile)
        self._streams: dict[int, _Stream] = {}
        self._opens: list[tuple[_Stream, concurrent.futures.Future]] = []  # until opened by a tick
        self._cond = threading.Condition()
        self._build_lock = threading.Lock()  # one engine build at a time
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        # observability, written by the worker thread only
        self.ticks = 0
        self.last_tick_ms = 0.0
        self.max_tick_ms = 0.0
        # Per tick: milliseconds outside the engines' step/flush calls (gathering input, resampling, slicing,
        # bookkeeping) = the server's own overhead. The last OVERHEAD_TICKS ticks that stepped something.
        self.overhead_ms: deque[float] = deque(maxlen=OVERHEAD_TICKS)
        self._engine_s = 0.0
        self.last_batch = 0

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
            enc_free, dec_free = self._engines.pools(spec.preset)
            need_enc = spec.mode.encodes
            need_dec = spec.mode == Mode.DECODE or (spec.mode == Mode.LOOPBACK and spec.want_audio)
            if (
                (need_enc and not enc_free)
                or (need_dec and not dec_free)
                or (spec.room_audio and not dec_free)
            ):
                raise WorkerFull(f"no free slot for latency preset {spec.preset!r}")
            st = _Stream(
                sid,
                spec,
                enc_free.pop() if need_enc else None,
                dec_free.pop() if need_dec else None,
                self._resampler(spec.sample_rate, CODEC_RATE) if need_enc else None,
                self._resampler(CODEC_RATE, spec.sample_rate) if need_dec else None,
            )
            if spec.room_audio:
                st.room_dec_slot, st.room_dec_reset = dec_free.pop(), True
            self._streams[sid] = st
            self._opens.append((st, fut))
            engines = self._engines
            build = spec.preset not in engines.enc and spec.preset not in engines.building
            if build:
                engines.building.add(spec.preset)
                engines.errors.pop(spec.preset, None)
            self._cond.notify()
        if build:  # never here nor in the tick: see the class docstring
            thread = threading.Thread(
                target=self._build, args=(spec.preset,), name=f"xcodec-build-{spec.preset}", daemon=True
            )
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: the waiting opens fail (the next one retries)
                self._built(spec.preset, None, exc)
        return fut

    def push_audio(self, sid: int, seq: int, pcm: np.ndarray) -> None:
        self._push(sid, ("audio", pcm, seq))

    def push_codes(self, sid: int, frame: int, codes: np.ndarray) -> None:
        self._push(sid, ("codes", codes, frame))

    def flush(self, sid: int) -> None:
        self._push(sid, ("flush",))

    def close(self, sid: int) -> None:
        """Forget the stream: pending input is dropped, its slots are freed by the worker thread."""
        with self._cond:
            st = self._streams.get(sid)
            if st is not None:
                st.closing = True
                st.pending.clear()
                self._cond.notify()

    def attach_listener(self, publisher: int, sid: int, sample_rate: int, fmt: str) -> None:
        """A room listener that wants audio: the room decoder starts (reset) on its first use."""
        with self._cond:
            st = self._streams.get(publisher)
            if st is None or st.closing:
                return
            if st.room_dec_slot is None:
                _, dec_free = self._engines.pools(st.spec.preset)
                if not dec_free:
                    raise WorkerFull("no free decoder slot for the room")
                st.room_dec_slot, st.room_dec_reset = dec_free.pop(), True
            st.listeners[sid] = _Listener(sid, self._resampler(CODEC_RATE, sample_rate), fmt)

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
            st.pending.append(item)
            st.last_push = time.monotonic()
            self._cond.notify()

    def _resampler(self, a: int, b: int) -> StreamingResampler:
        return StreamingResampler(a, b, zero_crossings=self.zero_crossings)

    def _build(self, preset: str) -> None:
        """A background thread: build a preset's engines, store them (or the error), wake the tick."""
        try:
            with self._build_lock, torch.inference_mode():
                pair = self._engines.build(preset)
        except BaseException as exc:  # handed to the streams waiting for this preset
            log.exception("building engine %r failed", preset)
            self._built(preset, None, exc)
        else:
            self._built(preset, pair, None)

    def _built(self, preset: str, pair: tuple[Any, Any] | None, error: BaseException | None) -> None:
        with self._cond:
            self._engines.building.discard(preset)
            if pair is not None:
                self._engines.enc[preset], self._engines.dec[preset] = pair
            else:
                self._engines.errors[preset] = error
            self._cond.notify_all()

    # ---------------------------------------------------------------- the thread
    def _run(self) -> None:
        try:
            if self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            with torch.inference_mode():
                for preset in self.preload:
                    enc, dec = self._engines.build(preset)
                    with self._cond:
                        self._engines.enc[preset], self._engines.dec[preset] = enc, dec
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._has_work())
                if self._stopping:
                    return
            if self.batch_wait_s:
                self._gather()
            t0 = time.perf_counter()
            self._engine_s = 0.0
            try:
                with torch.inference_mode():
                    self._tick()
            except Exception:  # a bug outside the guarded engine calls: fail what was in flight, go on
                log.exception("worker tick failed")
            dt = 1000 * (time.perf_counter() - t0)
            if self.last_batch:
                self.overhead_ms.append(dt - 1000 * self._engine_s)
            self.ticks += 1
            self.last_tick_ms = dt
            self.max_tick_ms = max(self.max_tick_ms, dt)
            if self.observe is not None:
                self.observe(dt / 1000.0, self.last_batch)

    def _gather(self) -> None:
        """Wait (at most batch_wait_ms) until every stream that is sending has input pending, so that one step
        serves them all instead of one step each: on a CPU the fixed cost of a step dominates."""
        deadline = time.monotonic() + self.batch_wait_s
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                waiting = any(
                    not st.pending
                    and st.opened
                    and not st.done
                    and not st.failed
                    and now - st.last_push < LIVE_S
                    for st in self._streams.values()
                )
                if not waiting or now >= deadline:
                    return
                self._cond.wait(deadline - now)

    def _open_due(self, st: _Stream, fut: concurrent.futures.Future) -> bool:
        """(Under the lock) whether this tick settles an open: its engine is built or failed, or nobody
        waits for it any more. Otherwise it waits for its preset's build."""
        engines = self._engines
        preset = st.spec.preset
        return (
            st.closing
            or fut.cancelled()
            or preset in engines.enc
            or (preset in engines.errors and preset not in engines.building)
        )

    def _has_work(self) -> bool:
        return any(self._open_due(st, fut) for st, fut in self._opens) or any(
            st.closing or (st.pending and st.opened and not st.failed) for st in self._streams.values()
        )

    def _tick(self) -> None:
        with self._cond:
            opens, waiting = [], []
            for st, fut in self._opens:
                (opens if self._open_due(st, fut) else waiting).append((st, fut))
            self._opens = waiting
            closing = [st for st in self._streams.values() if st.closing]
            for st in closing:
                del self._streams[st.sid]
        for st in closing:
            self._free(st)
        results: list[tuple[int, StepResult]] = []
        for st, fut in opens:
            self._open(st, fut, results)
        with self._cond:
            takes = [
                self._take(st) for st in self._streams.values() if st.opened and not st.failed and st.pending
            ]
            listeners = {
                t.stream.sid: dict(t.stream.listeners) for t in takes if t.stream.spec.mode.feeds_room
            }
        self.last_batch = len(takes)
        if takes:
            results += self._process(takes, listeners)
        if results:
            self.emit(results)

    def _open(self, st: _Stream, fut: concurrent.futures.Future, results: list) -> None:
        """Reset the stream's slots and answer its future. The future is marked running first: once that
        succeeds, the event loop can no longer cancel it, so setting its result cannot raise."""
        if st.closing:
            fut.cancel()
            return
        if not fut.set_running_or_notify_cancel():  # cancelled: nobody waits for this stream, free it now
            with self._cond:
                st.closing = True
                if self._streams.get(st.sid) is st:
                    del self._streams[st.sid]
            self._free(st)
            return
        try:
            with self._cond:
                enc, dec = self._engines.enc.get(st.spec.preset), self._engines.dec.get(st.spec.preset)
                error = self._engines.errors.get(st.spec.preset)
            if enc is None:
                raise RuntimeError(f"building the {st.spec.preset!r} engine failed: {error}") from error
            if st.enc_slot is not None:
                enc.reset(st.enc_slot)
                enc.set_bandwidth(st.enc_slot, st.spec.bandwidth)
            if st.dec_slot is not None:
                _reset_decoder(dec, st.dec_slot, enc if st.spec.mode == Mode.LOOPBACK else None)
            enc_ms = float(enc.latency_ms) if st.spec.mode != Mode.DECODE else 0.0
            dec_ms = float(dec.latency_ms) if st.spec.mode != Mode.ENCODE else 0.0
            if st.spec.mode == Mode.PUBLISH:
                dec_ms = 0.0  # listeners add the decoder latency (in their own `room` message)
            if st.spec.mode == Mode.LOOPBACK and not st.spec.want_audio:
                dec_ms = 0.0
            rs_ms = sum(r.latency_ms for r in (st.in_rs, st.out_rs) if r is not None)
            info = EngineInfo(
                n_q=n_q_for(self.model.config, st.spec.bandwidth),
                latency_ms=enc_ms + dec_ms + rs_ms,
                encoder_latency_ms=enc_ms,
                decoder_latency_ms=float(dec.latency_ms),
                lookahead_frames=int(enc.lookahead_frames),
                frame_size=int(enc.frame_size),
            )
        except Exception as exc:
            log.exception("opening stream %d failed", st.sid)
            st.failed = True
            fut.set_exception(exc)
            return
        st.opened = True
        fut.set_result(info)

    def _free(self, st: _Stream) -> None:
        enc_free, dec_free = self._engines.pools(st.spec.preset)
        with self._cond:
            if st.enc_slot is not None:
                enc_free.append(st.enc_slot)
            for slot in (st.dec_slot, st.room_dec_slot):
                if slot is not None:
                    dec_free.append(slot)
            st.enc_slot = st.dec_slot = st.room_dec_slot = None

    def _take(self, st: _Stream) -> _Take:
        """Pop this tick's input (called under the lock): whole messages up to max_step_ms, then a flush."""
        if st.spec.mode in (Mode.DECODE, Mode.RELAY):
            cap = max(1, int(self.max_step_ms * self.model.config.frame_rate / 1000))
        else:
            cap = max(1, int(self.max_step_ms * st.spec.sample_rate / 1000))
        audio: list[np.ndarray] = []
        codes: list[np.ndarray] = []
        seq_end, taken, flush = None, 0, False
        while st.pending:
            item = st.pending[0]
            if self.max_chunks_per_step and len(audio) + len(codes) >= self.max_chunks_per_step:
                break  # (the flush counts as a message here: it then gets a tick of its own)
            if item[0] == "flush":
                st.pending.popleft()
                flush = True
                break
            n = item[1].shape[-1]
            if taken and taken + n > cap:
                break
            st.pending.popleft()
            (audio if item[0] == "audio" else codes).append(item[1])
            taken += n
            seq_end = item[2] if item[0] == "audio" else item[2] + n - 1
        take = _Take(st, audio, codes, seq_end, flush)
        if st.spec.mode.feeds_room:
            take.room_slot, take.room_reset = st.room_dec_slot, st.room_dec_reset
        return take

    # ---------------------------------------------------------------- one tick of compute
    def _process(
        self, takes: list[_Take], listeners: dict[int, dict[int, _Listener]]
    ) -> list[tuple[int, StepResult]]:
        res = {t.stream.sid: StepResult(seq_end=t.seq_end) for t in takes}
        by_preset: dict[str, list[_Take]] = {}
        for t in takes:
            by_preset.setdefault(t.stream.spec.preset, []).append(t)
        for preset, group in by_preset.items():
            enc, dec = self._engines.enc[preset], self._engines.dec[preset]  # built before its streams opened
            codes = self._encode(enc, group, res)
            self._decode(dec, group, codes, res)
            for t in group:
                if not t.stream.failed:
                    self._finish(
                        t, codes.get(t.stream.sid), res[t.stream.sid], listeners.get(t.stream.sid, {})
                    )
        return list(res.items())

    def _fail(self, group: list[_Take], res: dict[int, StepResult], what: str) -> None:
        log.exception("%s failed for streams %s", what, [t.stream.sid for t in group])
        for t in group:
            t.stream.failed = True
            res[t.stream.sid] = StepResult(error="internal")

    def _guarded(
        self, engine: Any, group: list[_Take], run: Callable[[list[_Take]], Any], res: dict, what: str
    ) -> tuple[list[_Take], Any]:
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
                self._engine_s += time.perf_counter() - t0
        return [], None

    def _encode(self, enc: Any, group: list[_Take], res: dict[int, StepResult]) -> dict[int, np.ndarray]:
        """Input resampling, one encoder step for the whole group, then the encoder flushes."""
        users = [t for t in group if t.stream.enc_slot is not None]
        for t in users:
            st = t.stream
            pcm = np.concatenate([pcm_to_float(a) for a in t.audio]) if t.audio else np.zeros(0, np.float32)
            st.n_in += pcm.size
            res[st.sid].consumed = pcm.size
            x16 = st.in_rs.process(pcm)
            if t.flush:
                x16 = np.concatenate([x16, st.in_rs.flush()])
            st.n16_in += x16.size
            t.x16 = x16

        def run(takes: list[_Take]) -> tuple[dict, dict]:
            with _all_or_nothing(enc, [t.stream.enc_slot for t in takes]):
                inputs = {t.stream.enc_slot: torch.from_numpy(t.x16) for t in takes if t.x16.size}
                stepped = enc.step_slots(inputs) if inputs else {}
                flushing = [t.stream.enc_slot for t in takes if t.flush]
                return stepped, (enc.flush_slots(flushing) if flushing else {})

        out: dict[int, np.ndarray] = {}
        if not users:
            return out
        done, result = self._guarded(enc, users, run, res, "encoder step")
        for t in done:
            slot = t.stream.enc_slot
            parts = [_np(p) for p in (result[0].get(slot), result[1].get(slot)) if p is not None]
            if parts:
                out[t.stream.sid] = np.concatenate(parts, axis=-1).astype(np.int64, copy=False)
        return out

    def _decode(
        self, dec: Any, group: list[_Take], codes: dict[int, np.ndarray], res: dict[int, StepResult]
    ) -> None:
        """One decoder step for loopback, decode and room streams of the group, then the decoder flushes."""
        users: list[_Take] = []
        for t in group:
            st = t.stream
            if st.failed:
                continue
            if st.spec.mode == Mode.DECODE:
                c = _codes_taken(t)
                st.n_in += 0 if c is None else c.shape[-1]
                res[st.sid].consumed = 0 if c is None else c.shape[-1]
                slot = st.dec_slot
            elif st.spec.mode == Mode.LOOPBACK and st.dec_slot is not None:
                c, slot = codes.get(st.sid), st.dec_slot
            elif st.spec.mode.feeds_room and t.room_slot is not None:
                if t.room_reset:  # from the take's snapshot: the flag is only ever cleared here
                    # a relay's decoder starts like the publisher's room decoder (same lead): same audio
                    _reset_decoder(dec, t.room_slot, self._engines.enc[st.spec.preset])
                    with self._cond:
                        st.room_dec_reset = False
                if st.spec.mode == Mode.PUBLISH:
                    c = codes.get(st.sid)
                else:  # codes that came from another daemon's publisher (serving.cluster)
                    c = _codes_taken(t)
                slot = t.room_slot
            else:
                continue
            t.codes_in, t.dec_slot = c, slot
            users.append(t)

        def run(takes: list[_Take]) -> tuple[dict, dict]:
            with _all_or_nothing(dec, [t.dec_slot for t in takes]):
                inputs = {
                    t.dec_slot: torch.from_numpy(np.ascontiguousarray(t.codes_in))
                    for t in takes
                    if t.codes_in is not None and t.codes_in.shape[-1]
                }
                stepped = dec.step_slots(inputs) if inputs else {}
                flushing = [t.dec_slot for t in takes if t.flush]
                return stepped, (dec.flush_slots(flushing) if flushing else {})

        if not users:
            return
        done, result = self._guarded(dec, users, run, res, "decoder step")
        for t in done:
            parts = [
                _np(p).reshape(-1)
                for p in (result[0].get(t.dec_slot), result[1].get(t.dec_slot))
                if p is not None
            ]
            t.audio16 = np.concatenate(parts).astype(np.float32, copy=False) if parts else None

    def _finish(
        self, t: _Take, codes: np.ndarray | None, r: StepResult, listeners: dict[int, _Listener]
    ) -> None:
        """Turn the codec output of one stream into its result: counters, truncation, output resampling."""
        st = t.stream
        audio16 = t.audio16
        if codes is not None and codes.shape[-1]:
            r.frame, r.codes = st.frames_out, codes.astype(np.uint16)
            st.frames_out += codes.shape[-1]
        if st.spec.mode in (Mode.LOOPBACK, Mode.DECODE) and st.out_rs is not None:
            if audio16 is None:
                audio16 = np.zeros(0, np.float32)
            if st.spec.mode == Mode.LOOPBACK:
                # the codec pads the end to a whole frame: keep exactly as many samples as went in
                audio16 = audio16[: max(0, st.n16_in - st.n16_out)]
            st.n16_out += audio16.size
            y = st.out_rs.process(audio16)
            if t.flush:
                y = np.concatenate([y, st.out_rs.flush()])
            if st.spec.mode == Mode.LOOPBACK:
                y = y[: max(0, st.n_in - st.n_out)]
            if y.size:
                r.sample, r.audio = st.n_out, float_to_pcm(y, st.spec.fmt)
                st.n_out += y.size
        if st.spec.mode.feeds_room:
            self._room_audio(st, audio16, t.flush, r, listeners)
        if t.flush:
            st.done = True
            counted = "frames_in" if st.spec.mode == Mode.DECODE else "samples_in"
            r.done = {counted: st.n_in, "samples_out": st.n_out, "frames_out": st.frames_out}

    def _room_audio(
        self,
        st: _Stream,
        audio16: np.ndarray | None,
        flush: bool,
        r: StepResult,
        listeners: dict[int, _Listener],
    ) -> None:
        if audio16 is None and not flush:
            return
        if audio16 is None:
            audio16 = np.zeros(0, np.float32)
        st.room16_out += audio16.size
        for sid, lst in listeners.items():
            y = lst.resampler.process(audio16)
            if flush:
                y = np.concatenate([y, lst.resampler.flush()])
            if y.size:
                r.listeners[sid] = (lst.n_out, float_to_pcm(y, lst.fmt))
                lst.n_out += y.size
