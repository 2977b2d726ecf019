"""Client helpers without a server: the playback jitter buffer and the latency bookkeeping."""

from __future__ import annotations

import threading

import numpy as np

from xcodec_stream.clients.latency import LatencyTracker, format_report, percentiles
from xcodec_stream.clients.mic import JitterBuffer, client_rate_for


def test_jitter_buffer_prefills_then_plays_in_order() -> None:
    jb = JitterBuffer(target=100, max_samples=1000)
    jb.push(np.arange(60, dtype=np.float32))
    assert not jb.pull(50).any() and jb.silence == 50  # below the target: silence, nothing consumed
    jb.push(np.arange(60, 130, dtype=np.float32))
    np.testing.assert_array_equal(jb.pull(50), np.arange(50))
    np.testing.assert_array_equal(jb.pull(50), np.arange(50, 100))
    assert jb.level == 30 and jb.underruns == 0


def test_jitter_buffer_underrun_refills_and_end_plays_out() -> None:
    jb = JitterBuffer(target=100, max_samples=1000)
    jb.push(np.ones(120, np.float32))
    out = jb.pull(200)
    assert out[:120].all() and not out[120:].any() and jb.underruns == 1
    jb.push(np.ones(40, np.float32))
    assert not jb.pull(10).any()  # waiting for the target again after the underrun
    jb.end()
    assert jb.pull(40)[:40].sum() == 40 and jb.level == 0


def test_jitter_buffer_drops_oldest_beyond_max() -> None:
    jb = JitterBuffer(target=10, max_samples=100)
    jb.push(np.arange(80, dtype=np.float32))
    jb.push(np.arange(80, 150, dtype=np.float32))
    assert jb.level == 100 and jb.dropped == 50
    np.testing.assert_array_equal(jb.pull(100), np.arange(50, 150))


def test_jitter_buffer_threads() -> None:
    jb = JitterBuffer(target=0, max_samples=10**7)
    got: list[np.ndarray] = []

    def consumer() -> None:
        while jb.played < 50_000:
            got.append(jb.pull(128))

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(500):
        jb.push(np.full(100, i + 1, np.float32))
    jb.end()
    t.join(10)
    played = np.concatenate(got)
    played = played[played != 0]
    np.testing.assert_array_equal(played, np.repeat(np.arange(1, 501, dtype=np.float32), 100))


def test_client_rate_for_devices() -> None:
    assert [client_rate_for(r) for r in (96000, 48000, 44100, 16000, 4000)] == [
        48000,
        48000,
        44100,
        16000,
        8000,
    ]


def test_latency_tracker_and_report() -> None:
    t = [0.0]
    tr = LatencyTracker(clock=lambda: t[0])
    for seq in range(4):
        t[0] = seq * 0.02
        tr.sent(seq, (seq + 1) * 320)
    t[0] = 0.1
    tr.acked(1)
    tr.output(640)
    t[0] = 0.2
    tr.acked(3)
    tr.output(10_000)
    np.testing.assert_allclose(tr.processing_ms, [100, 80, 160, 140])
    np.testing.assert_allclose(tr.end_to_end_ms, [100, 80, 160, 140])
    p = percentiles([1.0, 2.0, 3.0, 4.0])
    assert p["p50"] == 2.5 and p["max"] == 4.0
    text = format_report(tr, algorithmic_ms=140.0, chunk_ms=20, realtime=True, n_chunks=4)
    assert "algorithmic latency" in text and "p99" in text and "140.0 ms" in text
