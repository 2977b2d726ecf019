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


def simulate(jb: JitterBuffer, clock: list[float], seconds: float, stalls_until: float) -> list[int]:
    """1 kHz toy stream: the device pulls 20 samples every 20 ms; the network delivers 20 ms messages in
    bursts of five every 100 ms and, until `stalls_until`, stalls 300 ms every 2 s, then catches up.
    Returns the buffer level after each pull (the playback latency: samples = ms)."""
    levels, sent, t = [], 0, 0.0
    while t < seconds:
        clock[0] = t
        due = int(t * 1000) // 100 * 100  # what the sender has produced by now, in whole bursts
        stalled = 0.5 < t < stalls_until and (t % 2.0) < 0.3
        while not stalled and sent + 20 <= due:
            jb.push(np.ones(20, np.float32))
            sent += 20
        jb.pull(20)
        levels.append(jb.level)
        t = round(t + 0.02, 6)
    return levels


def test_adaptive_jitter_buffer_follows_jitter_without_latency_creep() -> None:
    """Stalls of 300 ms every 2 s for 8 s, then a steady network for 12 s."""
    clock = [0.0]
    adaptive = JitterBuffer(40, 3000, rate=1000, max_target=1000, margin=20, clock=lambda: clock[0])
    levels = simulate(adaptive, clock, 20.0, stalls_until=8.0)
    # the target grew to cover the stalls: only the first one (before it was measured) underran ...
    assert adaptive.max_target_seen >= 300 and adaptive.underruns == 1
    # ... and came back down once the network was steady: the latency returned to the minimum's range
    assert adaptive.target < 150 and np.mean(levels[-250:]) < 150 and adaptive.skipped > 0

    clock[0] = 0.0
    fixed = JitterBuffer(40, 3000)  # the previous behaviour: a fixed target, the surplus never trimmed
    levels = simulate(fixed, clock, 20.0, stalls_until=8.0)
    assert fixed.underruns >= 1 and np.mean(levels[-250:]) > 300  # the stall's delay stays for good


def test_adaptive_jitter_buffer_skips_the_excess_after_a_burst() -> None:
    clock = [0.0]
    jb = JitterBuffer(50, 10_000, rate=1000, max_target=500, settle_s=1.0, clock=lambda: clock[0])
    for i in range(10):  # steady arrivals: the target stays at the minimum
        clock[0] = i * 0.02
        jb.push(np.ones(20, np.float32))
    assert jb.target == 50
    jb.pull(20)
    jb.push(np.ones(2000, np.float32))  # more arrives at once (the clock did not move: not late)
    pulls = 0
    while not jb.skipped:  # playback with nothing new arriving: the fill stays far above the target
        jb.pull(20)
        pulls += 1
    # after settle_s of playback (1 s = 50 pulls, the one before the burst included) above target + slack,
    # the excess went in one step, down to the target
    assert pulls + 1 == 50 and jb.level == jb.target and jb.underruns == 0
    assert jb.level + jb.played + jb.skipped == 2200
