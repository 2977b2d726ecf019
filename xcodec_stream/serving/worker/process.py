"""The model worker in a process of its own: `EngineProcess` (the daemon's side) has `Worker`'s API and
forwards every call over a pipe to `engine_main`, which runs an unchanged `Worker` in a spawned child.

Why: in one process the event loop (WebSocket frames, sessions) and the worker thread (a step is thousands of
small torch calls, each taking the GIL back) share one GIL, so the daemon tops out near one core whatever
the machine has. Apart, each side has its own interpreter: the loop parses frames while the engine steps.

Across the pipe (pickled tuples; the daemon's calls queue and a writer thread sends all that queued since
its last write as one list, so the event loop never waits on the pipe):
- daemon -> engine: ("open", sid, spec), ("push_audio", sid, seq, pcm), ("push_codes", sid, frame, codes),
  ("flush", sid), ("close", sid), ("attach", publisher, sid, rate, fmt), ("detach", publisher, sid),
  ("stop",);
- engine -> daemon: ("started", engines) or ("start_failed", text); per tick ("results", [(sid, StepResult)])
  and ("tick", seconds, batch, ticks, last_ms, max_ms, overhead_ms | None); ("opened", sid, EngineInfo |
  error); ("attached", publisher, sid, error | None); ("engines", {preset: latencies}) when a preset is built;
  ("stopped",).

The model reaches the child through torch.multiprocessing's pickling (CPU tensors in shared memory, CUDA
tensors by IPC handle): no second load, no second copy. If the engine process dies, every open stream gets
`internal`, waiting opens fail, and later opens fail at once (the daemon keeps serving its HTTP routes and
says so in /healthz) until `EnginePool` has replaced it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .api import StepResult, StreamSpec, TickFigures, WorkerFull, answered
from .thread import Worker

log = logging.getLogger("xcodec_stream.worker")

START_TIMEOUT_S = 600.0  # spawning, importing torch and building the preloaded presets (compiled: minutes)


def _error(exc: BaseException) -> tuple[str, str]:
    """An exception as (kind, message): the child's exceptions need not be picklable."""
    return ("full" if isinstance(exc, WorkerFull) else "error", str(exc) or type(exc).__name__)


def _exception(err: tuple[str, str]) -> Exception:
    kind, text = err
    return WorkerFull(text) if kind == "full" else RuntimeError(text)


@contextlib.contextmanager
def _main_not_reimported() -> Iterator[None]:
    """Spawn re-runs the parent's main script in the child (for functions pickled from it) unless that script
    is guarded by `if __name__ == "__main__"`; the engine needs nothing from it (its entry point lives here),
    so the child is told there is no main file, and a daemon embedded in any script starts its engine."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


# ------------------------------------------------------------------------------------------ the child
def engine_main(conn: Any, model: Any, worker_kwargs: dict, log_setup: tuple[str, str]) -> None:
    """The engine process: a Worker fed by the pipe. Exits on ("stop",) or when the daemon goes away."""
    from ..logs import setup_logging

    # the daemon drains on SIGINT/SIGTERM and then stops this process; a terminal's Ctrl-C reaches both
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(*log_setup, sys.stderr)
    lock = threading.Lock()  # the worker thread, futures' callbacks and this loop all send

    def send(msg: tuple) -> None:
        with lock:
            try:
                conn.send(msg)
            except (OSError, ValueError):  # the daemon is gone: the read loop below ends too
                pass

    engines: dict[str, dict] = {}

    def engines_now() -> dict[str, dict]:
        return {p: worker.engine_info(p) for p in worker.presets_loaded}

    def observe(seconds: float, batch: int) -> None:  # worker thread, once per tick
        overhead = worker.overhead_ms[-1] if batch and worker.overhead_ms else None
        send(("tick", seconds, batch, worker.ticks, worker.last_tick_ms, worker.max_tick_ms, overhead))
        if len(worker.presets_loaded) != len(engines):
            engines.update(engines_now())
            send(("engines", dict(engines)))

    worker = Worker(model, lambda results: send(("results", results)), observe=observe, **worker_kwargs)
    try:
        worker.start()
    except BaseException as exc:  # noqa: BLE001  (reported to the daemon, which raises it)
        send(("start_failed", f"{exc.__cause__ or exc}"))
        return
    engines.update(engines_now())
    # the model and the engines are built and live as long as the process: keep the cyclic collector from
    # walking them at every collection (a collection in a tick is a latency spike)
    gc.collect()
    gc.freeze()
    send(("started", dict(engines)))

    def opened(sid: int, fut: concurrent.futures.Future) -> None:
        if not fut.cancelled():
            exc = fut.exception()
            send(("opened", sid, _error(exc) if exc is not None else fut.result()))

    def handle(msg: tuple) -> bool:
        """One call from the daemon; False for ("stop",)."""
        kind = msg[0]
        if kind == "push_audio":
            worker.push_audio(*msg[1:])
        elif kind == "push_codes":
            worker.push_codes(*msg[1:])
        elif kind == "flush":
            worker.flush(msg[1])
        elif kind == "close":
            worker.close(msg[1])
        elif kind == "open":
            sid = msg[1]
            try:
                fut = worker.open(sid, msg[2])
            except Exception as exc:  # WorkerFull, a stream id in use
                send(("opened", sid, _error(exc)))
            else:
                fut.add_done_callback(lambda f, sid=sid: opened(sid, f))
        elif kind == "attach":
            try:
                worker.attach_listener(*msg[1:]).result()
            except Exception as exc:
                send(("attached", msg[1], msg[2], _error(exc)))
            else:
                send(("attached", msg[1], msg[2], None))
        elif kind == "detach":
            worker.detach_listener(*msg[1:])
        elif kind == "stop":
            return False
        return True

    try:
        running = True
        while running:
            try:
                batch = conn.recv()  # the calls the daemon queued since its last write, in order
            except (EOFError, OSError):  # the daemon died without stopping us
                break
            running = all(handle(msg) for msg in batch)
    finally:
        worker.stop()
        send(("stopped",))
        conn.close()


# ------------------------------------------------------------------------------------------ the daemon's side
class EngineProcess(TickFigures):
    """`Worker`'s API, served by a Worker in a child process (see the module docstring). `emit` and `observe`
    are called from this object's reader thread, as a Worker calls them from its own thread."""

    def __init__(
        self,
        model: Any,
        emit: Callable[[list[tuple[int, StepResult]]], None],
        *,
        observe: Callable[[float, int], None] | None = None,
        on_death: Callable[[EngineProcess], None] | None = None,
        log_level: str = "info",
        log_format: str = "text",
        **worker_kwargs: Any,
    ) -> None:
        self.model = model
        self.emit = emit
        self.observe = observe
        self.on_death = on_death  # called from the reader thread once the dead process's streams are failed
        self._kwargs = worker_kwargs
        self._log_setup = (log_level, log_format)
        self._lock = threading.Lock()  # the tables below, and the order of what is queued for the pipe
        # Calls for the engine queue here and a writer thread sends them (all that queued meanwhile, in one
        # write): the event loop never waits on the pipe, even when the engine process stalls.
        self._outbox: deque[tuple] = deque()
        self._wake = threading.Condition()
        self._writer: threading.Thread | None = None
        self._opens: dict[int, concurrent.futures.Future] = {}
        self._attaches: dict[tuple[int, int], concurrent.futures.Future] = {}
        self._sids: set[int] = set()  # open streams, to fail if the engine process dies
        self._engines: dict[str, dict] = {}
        self._conn: Any = None
        self._proc: Any = None
        self._reader: threading.Thread | None = None
        self._stopping = False
        self.dead: str | None = None  # why the engine process is gone, when it died
        self.started_at = 0.0  # monotonic time it came up
        self.quick_deaths = 0  # predecessors in its place that died soon after starting (restart back-off)
        super().__init__()  # the tick figures, as the engine process reports them once per tick

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        import torch.multiprocessing as mp  # its pickler shares the model's tensors instead of copying them

        ctx = mp.get_context("spawn")  # never fork: torch's thread pools and CUDA do not survive a fork
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=engine_main,
            args=(child, self.model, self._kwargs, self._log_setup),
            name="xcodec-engine",
        )
        with _main_not_reimported():
            self._proc.start()
        child.close()
        if not self._conn.poll(START_TIMEOUT_S):
            self._kill()
            raise RuntimeError(f"the engine process did not start within {START_TIMEOUT_S:.0f} s")
        try:
            msg = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise RuntimeError(
                f"the engine process exited while starting (exit code {self._proc.exitcode})"
            ) from None
        if msg[0] == "start_failed":
            self._proc.join(5)
            raise RuntimeError(f"worker failed to start: {msg[1]}")
        self._engines = msg[1]
        self.started_at = time.monotonic()
        log.info("engine process %d started", self._proc.pid)
        self._reader = threading.Thread(target=self._read, name="xcodec-engine-reader", daemon=True)
        self._reader.start()
        self._writer = threading.Thread(target=self._write, name="xcodec-engine-writer", daemon=True)
        self._writer.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is None:
            return
        self._stopping = True
        self._send(("stop",))
        self._proc.join(timeout)
        if self._proc.is_alive():
            log.warning("engine process %d did not stop within %.0f s: killed", self._proc.pid, timeout)
            self._kill()
        for thread in (self._writer, self._reader):
            if thread is not None:
                thread.join(timeout)
        self._conn.close()
        self._proc = None

    def _kill(self) -> None:
        self._proc.kill()
        self._proc.join(5)

    @property
    def streams(self) -> int:
        """Streams open in this process (what `EnginePool` balances)."""
        return len(self._sids)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # ---------------------------------------------------------------- Worker's API
    def open(self, sid: int, spec: StreamSpec) -> concurrent.futures.Future:
        """The future gets EngineInfo, or WorkerFull when no slot is free (a Worker raises that at once; here
        the answer comes from the engine process)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self.dead is not None:
                return self._gone()
            self._opens[sid] = fut
            self._sids.add(sid)
            self._send(("open", sid, spec))
        # a session that gives up waiting cancels: the engine then drops the open and frees its slots
        fut.add_done_callback(lambda f: f.cancelled() and self.close(sid))
        return fut

    def push_audio(self, sid: int, seq: int, pcm: Any) -> None:
        self._send(("push_audio", sid, seq, pcm))

    def push_codes(self, sid: int, frame: int, codes: Any) -> None:
        self._send(("push_codes", sid, frame, codes))

    def flush(self, sid: int) -> None:
        self._send(("flush", sid))

    def close(self, sid: int) -> None:
        with self._lock:
            self._sids.discard(sid)
            self._send(("close", sid))

    def attach_listener(
        self, publisher: int, sid: int, sample_rate: int, fmt: str
    ) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self.dead is not None:
                return self._gone()
            self._attaches[(publisher, sid)] = fut
            self._send(("attach", publisher, sid, sample_rate, fmt))
        return fut

    def _gone(self) -> concurrent.futures.Future:
        return answered(error=RuntimeError(f"the engine process is gone ({self.dead})"))

    def detach_listener(self, publisher: int, sid: int) -> None:
        self._send(("detach", publisher, sid))

    def engine_info(self, preset: str) -> dict[str, float] | None:
        return self._engines.get(preset)

    @property
    def presets_loaded(self) -> list[str]:
        return sorted(self._engines)

    # ---------------------------------------------------------------- the pipe
    def _send(self, msg: tuple) -> None:
        """Queue a call for the writer thread (the queue keeps the callers' order; nothing blocks)."""
        if self.dead is None:
            with self._wake:
                self._outbox.append(msg)
                self._wake.notify()

    def _write(self) -> None:
        """The writer thread: what queued since its last write, as one message, until ("stop",) is sent."""
        while True:
            with self._wake:
                while not self._outbox:
                    self._wake.wait()
                batch = list(self._outbox)
                self._outbox.clear()
            try:
                self._conn.send(batch)
            except (OSError, ValueError):  # the engine is gone: the reader thread reports it
                return
            if batch[-1][0] == "stop":
                return

    def _read(self) -> None:
        """The reader thread: results and figures from the engine process, until it stops or dies."""
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "results":
                self.emit(msg[1])
            elif kind == "tick":
                seconds, self.last_batch, self.ticks, self.last_tick_ms, self.max_tick_ms, overhead = msg[1:]
                if overhead is not None:
                    self.overhead_ms.append(overhead)
                if self.observe is not None:
                    self.observe(seconds, self.last_batch)
            elif kind == "opened":
                self._settle(self._opens, msg[1], msg[2])
            elif kind == "attached":
                self._settle(self._attaches, (msg[1], msg[2]), msg[3])
            elif kind == "engines":
                self._engines = msg[1]
            elif kind == "stopped":
                return
        if not self._stopping:
            self._died()

    def _settle(self, table: dict, key: Any, answer: Any) -> None:
        """An open's or attach's answer: its result, or an error as (kind, text). A cancelled open needs
        nothing more: its cancellation already sent `close`, which the engine gets after the open."""
        with self._lock:
            fut = table.pop(key, None)
        if fut is None or not fut.set_running_or_notify_cancel():
            return
        if isinstance(answer, tuple):
            fut.set_exception(_exception(answer))
        else:
            fut.set_result(answer)

    def _died(self) -> None:
        if self._proc is not None:
            self._proc.join(2)  # the pipe closes as the process exits: wait for its exit code
        exitcode = self._proc.exitcode if self._proc is not None else None
        with self._lock:
            self.dead = f"exit code {exitcode}" if exitcode is not None else "its pipe closed"
            sids, self._sids = sorted(self._sids), set()
            waiting = [*self._opens.values(), *self._attaches.values()]
            self._opens.clear()
            self._attaches.clear()
        log.error("the engine process died (%s): failing %d open streams", self.dead, len(sids))
        for fut in waiting:
            if fut.set_running_or_notify_cancel():
                fut.set_exception(RuntimeError(f"the engine process died ({self.dead})"))
        if sids:
            self.emit([(sid, StepResult(error="internal")) for sid in sids])
        if self.on_death is not None:
            self.on_death(self)
