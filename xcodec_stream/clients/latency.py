"""Round-trip latency bookkeeping for streaming clients: per-chunk send times matched to acks and output."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    a = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(a.max())}


@dataclass
class LatencyTracker:
    """Records when each chunk left and when (a) the server acknowledged consuming it (`seq_end`) and
    (b) the output covering its last sample came back. Times in ms, on the client's monotonic clock."""

    clock: Callable[[], float] = time.monotonic
    _sent: deque = field(default_factory=deque)  # (seq, end position in output units, t_send) awaiting ack
    _pending_out: deque = field(default_factory=deque)  # (end position, t_send) awaiting output
    processing_ms: list[float] = field(default_factory=list)
    end_to_end_ms: list[float] = field(default_factory=list)

    def sent(self, seq: int, end: int) -> None:
        """Chunk `seq` was sent; its last sample maps to output position `end` (exclusive)."""
        t = self.clock()
        self._sent.append((seq, t))
        self._pending_out.append((end, t))

    def acked(self, seq_end: int | None) -> None:
        if seq_end is None:
            return
        now = self.clock()
        while self._sent and self._sent[0][0] <= seq_end:
            _, t = self._sent.popleft()
            self.processing_ms.append(1000.0 * (now - t))

    def output(self, end: int) -> None:
        """Output now reaches position `end` (exclusive) on the same axis as `sent`'s `end`."""
        now = self.clock()
        while self._pending_out and self._pending_out[0][0] <= end:
            _, t = self._pending_out.popleft()
            self.end_to_end_ms.append(1000.0 * (now - t))

    def summary(self) -> dict[str, dict[str, float]]:
        return {"processing": percentiles(self.processing_ms), "end_to_end": percentiles(self.end_to_end_ms)}


def format_report(
    tracker: LatencyTracker,
    *,
    algorithmic_ms: float,
    chunk_ms: float,
    realtime: bool,
    n_chunks: int,
    dropped: int = 0,
    extra: str = "",
) -> str:
    s = tracker.summary()

    def row(name: str, d: dict[str, float], n: int) -> str:
        return (
            f"  {name:<44} p50 {d['p50']:7.1f}  p95 {d['p95']:7.1f}  p99 {d['p99']:7.1f}  max {d['max']:7.1f} ms"
            f"  ({n} chunks)"
        )

    lines = [
        f"latency report: {n_chunks} chunks of {chunk_ms:g} ms, {'real time' if realtime else 'as fast as possible'}"
        + (f", {extra}" if extra else ""),
        f"  algorithmic latency (codec lookahead + resampling): {algorithmic_ms:.1f} ms",
        row("processing round trip (sent -> consumed)", s["processing"], len(tracker.processing_ms)),
        row("end to end (sent -> its last sample back)", s["end_to_end"], len(tracker.end_to_end_ms)),
        f"  dropped by the server (slow reader): {dropped} messages",
    ]
    if not realtime:
        lines.append("  (as fast as possible: round trips include queueing; use --realtime for live figures)")
    return "\n".join(lines)
