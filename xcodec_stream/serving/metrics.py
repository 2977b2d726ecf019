"""Prometheus metrics of one daemon (`GET /metrics`): a registry per server, session gauges read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from .protocol import MODES

PREFIX = "xcodec_stream"
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _SessionCollector:
    """Gauges computed from the live sessions when scraped (always consistent, nothing to keep in sync)."""

    def __init__(self, sessions: Callable[[], Iterable[Any]]) -> None:
        self.sessions = sessions

    def describe(self) -> list:
        return []  # computed at scrape time; nothing to check for name clashes at registration

    def collect(self) -> Iterable[GaugeMetricFamily]:
        sessions = list(self.sessions())
        by_mode = GaugeMetricFamily(
            f"{PREFIX}_sessions", "Open sessions by mode (handshake: hello not yet accepted)", labels=["mode"]
        )
        counts = dict.fromkeys((*MODES, "handshake"), 0)
        for s in sessions:
            counts[s.mode or "handshake"] += 1
        for mode, n in counts.items():
            by_mode.add_metric([mode], n)
        yield by_mode
        yield GaugeMetricFamily(
            f"{PREFIX}_sessions_detached",
            "Sessions whose connection dropped, waiting for a resume",
            value=sum(1 for s in sessions if not s.attached),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_output_queue_messages",
            "Messages waiting to be sent, all sessions",
            value=sum(len(s.out) for s in sessions),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_output_queue_seconds",
            "Audio/codes waiting to be sent, all sessions (seconds of signal)",
            value=sum(s.out.data_ms + s.out.pinned_ms for s in sessions) / 1000.0,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_input_backlog_seconds",
            "Input accepted but not yet processed by the codec, all sessions (seconds of signal)",
            value=sum(s.lag_ms for s in sessions) / 1000.0,
        )


class Metrics:
    """Counters and histograms the daemon updates; `render()` is the Prometheus text exposition."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, sessions: Callable[[], Iterable[Any]]) -> None:
        r = self.registry = CollectorRegistry()
        self.step_seconds = Histogram(
            f"{PREFIX}_step_seconds", "Duration of one worker tick (batched codec step)", buckets=STEP_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size", "Sessions stepped together in one worker tick", buckets=BATCH_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.dropped = Counter(
            f"{PREFIX}_dropped_messages", "Audio/codes messages dropped for slow readers", registry=r
        )
        self.errors = Counter(f"{PREFIX}_errors", "Errors sent to clients, by code", ["code"], registry=r)
        self.bytes_in = Counter(f"{PREFIX}_received_bytes", "WebSocket payload bytes received", registry=r)
        self.bytes_out = Counter(f"{PREFIX}_sent_bytes", "WebSocket payload bytes sent", registry=r)
        self.sessions_opened = Counter(
            f"{PREFIX}_sessions_opened", "Sessions that reached ready, by mode", ["mode"], registry=r
        )
        self.resumes = Counter(f"{PREFIX}_resumes", "Sessions resumed on a new connection", registry=r)
        r.register(_SessionCollector(sessions))

    def observe_step(self, seconds: float, batch: int) -> None:
        """Called by the worker thread (prometheus_client metrics are thread-safe)."""
        self.step_seconds.observe(seconds)
        if batch:
            self.batch_size.observe(batch)

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
