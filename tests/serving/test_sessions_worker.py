"""Session building blocks and the worker thread, without sockets."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from fakes import FRAME, FakeModel, local_run
from serving_helpers import speech

from xcodec_stream.serving.flow import OutputQueue, QueueOverflow, TokenBucket
from xcodec_stream.serving.protocol import ProtocolError
from xcodec_stream.serving.resume import ReplayBuffer
from xcodec_stream.serving.worker import StreamSpec, Worker, WorkerFull
from xcodec_stream.serving.worker import thread as worker_thread


async def test_output_queue_drops_oldest_data_never_control() -> None:
    q = OutputQueue(max_data_ms=100, max_control=3)
    q.put_data({"type": "audio", "i": 0}, 40)
    q.put_control({"type": "ack", "i": 1})
    q.put_data({"type": "audio", "i": 2}, 40)
    q.put_data({"type": "audio", "i": 3}, 40)  # 120 ms: the oldest data (i=0) goes
    assert q.dropped == 1 and q.data_ms == 80
    got = [q.pop() for _ in range(3)]
    assert [m["i"] for m in got] == [1, 2, 3]
    assert "dropped" not in got[0] and got[1]["dropped"] == got[2]["dropped"] == 1
    q.put_data({"type": "audio"}, 500)  # alone bigger than the bound: kept (never drop the newest)
    assert q.pop() is not None and q.pop() is None
    for _ in range(3):
        q.put_control({"type": "ack"})
    with pytest.raises(QueueOverflow):
        q.put_control({"type": "ack"})
    q.put_control({"type": "error"}, force=True)  # a fatal error always gets in
    assert len(q) == 4


async def test_output_queue_get_and_join() -> None:
    q = OutputQueue(max_data_ms=100, max_control=10)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.put_control({"type": "x"})
    assert (await getter)["type"] == "x"
    q.put_control({"type": "y"})
    joiner = asyncio.create_task(q.join())
    await asyncio.sleep(0)
    assert not joiner.done()
    q.pop()
    await asyncio.wait_for(joiner, 1)


async def test_output_queue_pinned_data_and_put_front() -> None:
    drops = []
    q = OutputQueue(max_data_ms=100, max_control=10, on_drop=drops.append)
    q.put_data({"type": "audio", "i": 0}, 400, pinned=True)  # owed to a resuming client: never dropped
    q.put_data({"type": "audio", "i": 1}, 60)
    q.put_data({"type": "audio", "i": 2}, 60)  # 120 ms unpinned: i=1 goes, i=0 stays
    assert q.dropped == 1 and drops == [1] and (q.data_ms, q.pinned_ms) == (60, 400)
    q.put_front([({"type": "resumed"}, 0.0), ({"type": "codes", "i": -1}, 20.0)])
    got = [q.pop() for _ in range(4)]
    assert [m.get("i", m["type"]) for m in got] == ["resumed", -1, 0, 2]
    assert q.pop() is None and q.pinned_ms == q.data_ms == 0 and q.n_control == 0


def _audio(start: int, n: int) -> dict:
    return {"type": "audio", "sample": start, "pcm": np.arange(start, start + n, dtype=np.float32)}


def test_replay_buffer_acks_bound_and_replay_from_a_position() -> None:
    rb = ReplayBuffer(max_ms=300)
    for k in range(5):  # 5 x 100 ms of audio (1600 samples at 16 kHz), in order
        rb.record(_audio(1600 * k, 1600), 100.0)
    # only the last 300 ms are kept: the first two were let go (floor)
    assert len(rb) == 3 and rb.floor["audio"] == 3200 and rb.sent_end["audio"] == 8000
    rb.ack(sample=4000, frame=None)  # the client has everything before 4000: the message 3200..4800 stays
    assert len(rb) == 3
    rb.ack(sample=4800, frame=None)
    assert len(rb) == 2 and rb.ms == 200
    items, start = rb.take_from(sample=5000, frame=None)  # mid-message: cut there
    assert start["audio"] == 5000 and [m["sample"] for m, _ in items] == [5000, 6400]
    np.testing.assert_array_equal(items[0][0]["pcm"], np.arange(5000, 6400, dtype=np.float32))
    assert items[0][1] == pytest.approx(100.0 * 1400 / 1600) and len(rb) == 0
    with pytest.raises(ProtocolError) as info:
        rb.check(sample=8001, frame=None)
    assert info.value.code == "resume_failed"
    # a client behind the floor gets the replay from the floor (the gap is what it lost)
    rb2 = ReplayBuffer(max_ms=100)
    rb2.record(_audio(0, 1600), 100.0)
    rb2.record(_audio(1600, 1600), 100.0)
    assert rb2.take_from(sample=0, frame=None)[1]["audio"] == 1600


def test_token_bucket() -> None:
    t = [0.0]
    b = TokenBucket(rate=10, burst=3, clock=lambda: t[0])
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    t[0] = 0.1
    assert b.take() and not b.take()


def test_worker_batches_sessions_and_reuses_slots() -> None:
    model = FakeModel()
    results: list = []
    got = threading.Event()

    def emit(batch):
        results.extend(batch)
        if any(r.done for _, r in batch):
            got.set()

    w = Worker(model, emit, capacity=2)
    w.start()
    try:
        x = speech(seconds=0.5)
        spec = StreamSpec("loopback", 16000, "f32", "balanced", None, want_audio=True)
        info = w.open(1, spec).result(5)
        assert info.n_q == 4 and info.frame_size == FRAME and info.lookahead_frames == 2
        w.open(2, StreamSpec("encode", 16000, "f32", "balanced")).result(5)
        with pytest.raises(WorkerFull):
            w.open(3, StreamSpec("encode", 16000, "f32", "balanced"))
        for seq, i in enumerate(range(0, x.size, 800)):
            w.push_audio(1, seq, x[i : i + 800].astype("<f4"))
        w.flush(1)
        assert got.wait(5)
        audio = np.concatenate([r.audio for sid, r in results if sid == 1 and r.audio is not None])
        _, want = local_run(FakeModel(), [x])
        np.testing.assert_array_equal(audio, want)
        # a closed stream's slot goes back to the pool (freed by the worker thread)
        w.close(2)
        for _ in range(100):
            try:
                w.open(3, StreamSpec("encode", 16000, "f32", "balanced")).result(5)
                break
            except WorkerFull:
                threading.Event().wait(0.01)
        else:
            raise AssertionError("slot never freed")
    finally:
        w.stop()


def _collector() -> tuple[list, threading.Condition, Callable]:
    """An `emit` that keeps every result; wait on the condition with a predicate over the list."""
    results: list = []
    cond = threading.Condition()

    def emit(batch) -> None:
        with cond:
            results.extend(batch)
            cond.notify_all()

    return results, cond, emit


def _wait(cond: threading.Condition, done: Callable[[], bool], timeout: float = 5.0) -> bool:
    with cond:
        return cond.wait_for(done, timeout)


def _done(results: list, sid: int) -> bool:
    return any(s == sid and r.done for s, r in results)


def test_worker_reads_the_room_decoder_slot_under_the_lock(monkeypatch) -> None:
    """The room decoder slot and its reset flag are written by `attach_listener` (event loop) under the lock;
    the tick reads and clears them under the lock too (every access checked), and the slot (dirty from a
    closed decode stream) is reset before the room's first step: the listener gets the fresh decoding."""
    holder: list[Worker] = []
    unlocked: list[tuple[str, str]] = []

    class LockChecked(worker_thread.Stream):
        def _check(self, name: str) -> None:
            if name in ("room_dec_slot", "room_dec_reset") and holder and not holder[0]._cond._is_owned():
                unlocked.append((threading.current_thread().name, name))

        def __getattribute__(self, name: str):
            object.__getattribute__(self, "_check")(name)
            return object.__getattribute__(self, name)

        def __setattr__(self, name: str, value) -> None:
            self._check(name)
            object.__setattr__(self, name, value)

    monkeypatch.setattr(worker_thread, "Stream", LockChecked)  # what `Worker.open` builds
    model = FakeModel()
    results, cond, emit = _collector()
    w = Worker(model, emit, capacity=1, max_chunks_per_step=1)
    holder.append(w)
    w.start()
    try:
        x = speech(seconds=0.5)
        # a decode stream leaves decoder slot 0 mid-stream (no flush), then goes
        w.open(1, StreamSpec("decode", 16000, "f32", "balanced")).result(5)
        codes, _ = local_run(FakeModel(), [x])
        w.push_codes(1, 0, codes[:, :7])
        assert _wait(cond, lambda: any(s == 1 and r.audio is not None for s, r in results))
        w.close(1)
        for _ in range(100):  # its slots are freed by the worker thread
            try:
                w.open(2, StreamSpec("publish", 16000, "f32", "balanced")).result(5)
                break
            except WorkerFull:
                threading.Event().wait(0.01)
        w.attach_listener(2, 3, 16000, "f32")  # the room decoder takes slot 0, still dirty
        for seq, i in enumerate(range(0, x.size, 800)):
            w.push_audio(2, seq, x[i : i + 800].astype("<f4"))
        w.flush(2)
        assert _wait(cond, lambda: _done(results, 2))
    finally:
        w.stop()
    assert unlocked == []
    room = np.concatenate([r.listeners[3][1] for s, r in results if s == 2 and 3 in r.listeners])
    _, want = local_run(FakeModel(), [x])
    np.testing.assert_array_equal(room[: x.size], want)


def test_worker_drops_an_open_whose_future_was_cancelled(caplog) -> None:
    """A session that gives up while its stream is being opened cancels the future: the tick that reaches it
    frees its slots and goes on, serving the other sessions of that tick and opening the next stream."""
    model = FakeModel()
    results, cond, emit = _collector()
    w = Worker(model, emit, capacity=3, max_chunks_per_step=1)
    w.start()
    try:
        x = speech(seconds=0.2)
        enc_spec = StreamSpec("encode", 16000, "f32", "balanced")
        w.open(1, enc_spec).result(5)
        enc = model.encoders[0]
        step, gate, held = enc.step_slots, threading.Event(), threading.Event()

        def gated(inputs):  # the first step holds the worker until the opens below are queued
            if not held.is_set():
                held.set()
                gate.wait(5)
            return step(inputs)

        enc.step_slots = gated
        w.push_audio(1, 0, x[:1600])
        assert held.wait(5)
        cancelled = w.open(2, enc_spec)
        assert cancelled.cancel()
        after = w.open(3, enc_spec)
        w.push_audio(1, 1, x[1600:])
        w.flush(1)
        with caplog.at_level(logging.ERROR, logger="xcodec_stream.worker"):
            gate.set()
            assert after.result(5).n_q == 4
            assert _wait(cond, lambda: _done(results, 1))
        assert w._thread is not None and w._thread.is_alive()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        w.open(4, enc_spec).result(5)  # the cancelled stream's slot is free again
        with pytest.raises(WorkerFull):
            w.open(5, enc_spec)
    finally:
        w.stop()
    want, _ = local_run(FakeModel(), [x], decode=False)
    got = np.concatenate([r.codes for s, r in results if s == 1 and r.codes is not None], axis=-1)
    np.testing.assert_array_equal(got, want)


class _SlowBuild(FakeModel):
    """Building the `low` engine blocks until `release` (set by the test): a preset that takes seconds."""

    def __init__(self, fail_first: bool = False) -> None:
        super().__init__()
        self.building, self.release = threading.Event(), threading.Event()
        self.fail_first = fail_first
        self.builds = 0

    def streaming_encoder(self, batch_size, bandwidth=None, latency="balanced"):
        if latency == "low":
            self.builds += 1
            self.building.set()
            self.release.wait(10)
            if self.fail_first and self.builds == 1:
                raise RuntimeError("injected build failure")
        return super().streaming_encoder(batch_size, bandwidth, latency)


def test_worker_builds_a_new_preset_off_the_tick_and_the_event_loop() -> None:
    """A preset that was not preloaded is built by a background thread: `open` returns at once (it runs on
    the event loop), a live session keeps getting ticks while the build runs, and the new stream opens
    when its engine is ready."""
    model = _SlowBuild()
    results, cond, emit = _collector()
    w = Worker(model, emit, capacity=2, max_chunks_per_step=1, preload=("balanced",))
    w.start()
    try:
        x = speech(seconds=0.5)
        live = StreamSpec("loopback", 16000, "f32", "balanced", want_audio=True)
        w.open(1, live).result(5)
        t0 = time.monotonic()
        slow = w.open(2, StreamSpec("loopback", 16000, "f32", "low", want_audio=True))
        assert time.monotonic() - t0 < 0.5
        assert model.building.wait(5)
        ticks = w.ticks
        for seq, i in enumerate(range(0, x.size, 800)):
            w.push_audio(1, seq, x[i : i + 800].astype("<f4"))
        w.flush(1)
        assert _wait(cond, lambda: _done(results, 1)), "the live session stalled while the preset was built"
        assert w.ticks >= ticks + 10 and not slow.done() and w.presets_loaded == ["balanced"]
        model.release.set()
        assert slow.result(5).lookahead_frames == 0
        assert w.presets_loaded == ["balanced", "low"]
        w.push_audio(2, 0, x.astype("<f4"))
        w.flush(2)
        assert _wait(cond, lambda: _done(results, 2))
    finally:
        model.release.set()
        w.stop()
    for sid, latency in ((1, "balanced"), (2, "low")):
        audio = np.concatenate([r.audio for s, r in results if s == sid and r.audio is not None])
        np.testing.assert_array_equal(audio, local_run(FakeModel(), [x], latency=latency)[1])


def test_worker_preset_build_failure_fails_its_opens_and_is_retried() -> None:
    model = _SlowBuild(fail_first=True)
    model.release.set()
    results, cond, emit = _collector()
    w = Worker(model, emit, capacity=2, preload=("balanced",))
    w.start()
    try:
        spec = StreamSpec("encode", 16000, "f32", "low")
        with pytest.raises(RuntimeError, match="injected build failure"):
            w.open(1, spec).result(5)
        w.close(1)
        assert w.open(2, spec).result(5).lookahead_frames == 0  # the next open builds it again
        assert model.builds == 2
        w.push_audio(2, 0, np.zeros(640, "<f4"))
        w.flush(2)
        assert _wait(cond, lambda: _done(results, 2))
    finally:
        w.stop()
