"""Session building blocks and the worker thread, without sockets."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from fakes import FRAME, FakeModel, local_run
from serving_helpers import speech

from xcodec_stream.serving.flow import OutputQueue, QueueOverflow, TokenBucket
from xcodec_stream.serving.protocol import ProtocolError
from xcodec_stream.serving.resume import ReplayBuffer
from xcodec_stream.serving.worker import StreamSpec, Worker, WorkerFull


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
