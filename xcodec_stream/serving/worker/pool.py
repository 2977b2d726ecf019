"""Several engine processes behind one `Worker` API: each stream lives in one of them, chosen when it opens.

Why: a streaming step of a small model is thousands of small torch calls, which a second intra-op thread
barely speeds up (its work per call is too small to share). On a CPU with C cores, C engine processes with one
thread each run C steps at once instead. The model's tensors are shared between the processes (one copy in
memory); each process has its own slots, so the daemon holds up to `capacity` streams in each.

Routing: `open` picks the live process with the fewest streams; every later call of the stream goes to it;
a room's listeners attach in the publisher's process (its room decoder lives there). One process that dies
fails only its own streams; new streams go to the others, and a new process takes its place (after 1 s, or
longer while its predecessors keep dying soon after starting: 2, 4, ... 30 s).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .api import StepResult, StreamSpec, answered
from .process import EngineProcess

log = logging.getLogger("xcodec_stream.worker")

RESTART_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # by how many predecessors died soon after starting
STABLE_S = 60.0  # a process that lived this long died of something else: its successor starts after 1 s


class EnginePool:
    """`Worker`'s API over `processes` EngineProcess instances (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        emit: Callable[[list[tuple[int, StepResult]]], None],
        *,
        processes: int,
        **kwargs: Any,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        if not kwargs.get("torch_threads"):  # torch's default in every process would oversubscribe the cores
            kwargs["torch_threads"] = max(1, len(os.sched_getaffinity(0)) // processes)
        self._model, self._emit, self._kwargs = model, emit, kwargs
        self.engines = [self._new() for _ in range(processes)]
        self._route: dict[int, EngineProcess] = {}
        self._stopping = False
        self.restarts = 0  # engine processes replaced after dying

    def _new(self) -> EngineProcess:
        return EngineProcess(self._model, self._emit, on_death=self._replace, **self._kwargs)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        # one after the other: each imports torch and builds its presets, and the machine's cores are few
        try:
            for engine in self.engines:
                engine.start()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        for engine in self.engines:
            engine.stop(timeout)

    def _replace(self, dead: EngineProcess) -> None:
        """(The dead process's reader thread, its streams already failed.) A new process in its place."""
        if not self._stopping:
            threading.Thread(
                target=self._restart, args=(dead,), name="xcodec-engine-restart", daemon=True
            ).start()

    def _restart(self, dead: EngineProcess) -> None:
        quick = dead.quick_deaths + 1 if time.monotonic() - dead.started_at < STABLE_S else 0
        pid = dead.pid
        dead.stop(1.0)  # reaps the process, closes its pipe
        while not self._stopping:
            delay = RESTART_DELAYS_S[min(quick, len(RESTART_DELAYS_S) - 1)]
            log.warning("engine process %s died (%s): starting another in %.0f s", pid, dead.dead, delay)
            time.sleep(delay)
            if self._stopping:
                return
            engine = self._new()
            engine.quick_deaths = quick
            try:
                engine.start()
            except Exception as exc:  # noqa: BLE001  (logged; tried again, later)
                log.error("engine process could not be restarted: %s", exc)
                quick += 1
                continue
            if self._stopping:  # the daemon stopped while it started
                engine.stop()
                return
            self.engines[self.engines.index(dead)] = engine
            self.restarts += 1
            log.warning("engine process %d replaces %s", engine.pid, pid)
            return

    # ---------------------------------------------------------------- routing
    def open(self, sid: int, spec: StreamSpec) -> concurrent.futures.Future:
        live = [e for e in self.engines if e.dead is None] or self.engines  # all dead: the first one says so
        engine = min(live, key=lambda e: e.streams)
        self._route[sid] = engine
        return engine.open(sid, spec)

    def push_audio(self, sid: int, seq: int, pcm: Any) -> None:
        if (engine := self._route.get(sid)) is not None:
            engine.push_audio(sid, seq, pcm)

    def push_codes(self, sid: int, frame: int, codes: Any) -> None:
        if (engine := self._route.get(sid)) is not None:
            engine.push_codes(sid, frame, codes)

    def flush(self, sid: int) -> None:
        if (engine := self._route.get(sid)) is not None:
            engine.flush(sid)

    def close(self, sid: int) -> None:
        if (engine := self._route.pop(sid, None)) is not None:
            engine.close(sid)

    def attach_listener(
        self, publisher: int, sid: int, sample_rate: int, fmt: str
    ) -> concurrent.futures.Future:
        engine = self._route.get(publisher)
        if engine is None:  # the publisher is gone: nothing to attach to (a Worker ignores it too)
            return answered()
        return engine.attach_listener(publisher, sid, sample_rate, fmt)

    def detach_listener(self, publisher: int, sid: int) -> None:
        if (engine := self._route.get(publisher)) is not None:
            engine.detach_listener(publisher, sid)

    # ---------------------------------------------------------------- what /healthz shows
    def engine_info(self, preset: str) -> dict[str, float] | None:
        return self.engines[0].engine_info(preset)

    @property
    def presets_loaded(self) -> list[str]:
        return self.engines[0].presets_loaded

    @property
    def dead(self) -> str | None:
        """Why an engine process is gone, if one is (its streams failed; the daemon is degraded)."""
        return next((f"engine {i}: {e.dead}" for i, e in enumerate(self.engines) if e.dead), None)

    @property
    def pids(self) -> list[int]:
        return [e.pid for e in self.engines if e.pid is not None]

    @property
    def ticks(self) -> int:
        return sum(e.ticks for e in self.engines)

    @property
    def last_tick_ms(self) -> float:
        return max(e.last_tick_ms for e in self.engines)

    @property
    def max_tick_ms(self) -> float:
        return max(e.max_tick_ms for e in self.engines)

    @property
    def last_batch(self) -> int:
        return sum(e.last_batch for e in self.engines)

    @property
    def overhead_ms(self) -> list[float]:
        return [v for e in self.engines for v in e.overhead_ms]
