"""The codec's streaming engines: one encoder/decoder pair per latency preset, `capacity` slots each, built at
start (`preload`) or, for another preset, on first use by a background thread: never on the event loop (where
`Worker.open` runs) nor in the tick (which serves every live session), since a build takes seconds for the real
model. One build at a time, under `torch.inference_mode`; construction only reads the model, which the tick
keeps stepping meanwhile. The dicts are written under the worker's lock, whose condition a build's end wakes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch

log = logging.getLogger("xcodec_stream.worker")


class Engines:
    def __init__(self, model: Any, capacity: int, compile: str, cond: threading.Condition) -> None:
        self.model = model
        self.capacity = capacity
        self.compile = compile
        self._cond = cond
        self._build_lock = threading.Lock()  # one engine build at a time
        self.enc: dict[str, Any] = {}
        self.dec: dict[str, Any] = {}
        self.building: set[str] = set()  # presets a background thread is building now
        self.errors: dict[str, BaseException] = {}  # presets whose last build failed (until the next try)

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

    def preload(self, presets: tuple[str, ...]) -> None:
        """Build these presets now, in the calling thread (the worker's, before its first tick)."""
        with torch.inference_mode():
            for preset in presets:
                enc, dec = self.build(preset)
                with self._cond:
                    self.enc[preset], self.dec[preset] = enc, dec

    def claim_build(self, preset: str) -> bool:
        """(Under the lock) whether the caller must start the preset's build (`start_build`, after releasing
        the lock): it is neither built nor being built. Forgets the last build's error."""
        if preset in self.enc or preset in self.building:
            return False
        self.building.add(preset)
        self.errors.pop(preset, None)
        return True

    def start_build(self, preset: str) -> None:
        thread = threading.Thread(
            target=self._build, args=(preset,), name=f"xcodec-build-{preset}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # no thread to be had: the waiting opens fail (the next one retries)
            self._built(preset, None, exc)

    def settled(self, preset: str) -> bool:
        """(Under the lock) the preset's engines are built, or its build failed and none is running."""
        return preset in self.enc or (preset in self.errors and preset not in self.building)

    def _build(self, preset: str) -> None:
        """The background thread: build, store the pair (or the error), wake the tick."""
        try:
            with self._build_lock, torch.inference_mode():
                pair = self.build(preset)
        except BaseException as exc:  # handed to the streams waiting for this preset
            log.exception("building engine %r failed", preset)
            self._built(preset, None, exc)
        else:
            self._built(preset, pair, None)

    def _built(self, preset: str, pair: tuple[Any, Any] | None, error: BaseException | None) -> None:
        with self._cond:
            self.building.discard(preset)
            if pair is not None:
                self.enc[preset], self.dec[preset] = pair
            else:
                self.errors[preset] = error
            self._cond.notify_all()
