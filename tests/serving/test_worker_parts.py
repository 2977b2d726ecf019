"""The worker's parts alone: the slot pool, the input queues, the output shaping (no thread, no model), and
the tick runner driven tick by tick with the fake codec (no thread started)."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import FRAME, FakeModel, local_run

from xcodec_stream.serving.worker import EngineInfo, StepResult, StreamSpec, Worker, WorkerFull
from xcodec_stream.serving.worker.inputs import AUDIO, CODES, FLUSH, InputQueue, awaited, step_cap, take
from xcodec_stream.serving.worker.outputs import finish, slot_audio, slot_codes, stream_info
from xcodec_stream.serving.worker.slots import SlotPool
from xcodec_stream.serving.worker.stream import Listener, Stream
from xcodec_stream.streaming.resample import StreamingResampler


def _stream(mode: str, *, rate: int = 16000, fmt: str = "f32", cap: int = 10_000, **kw) -> Stream:
    spec = StreamSpec(mode, rate, fmt, "balanced", **kw)
    rs_in = StreamingResampler(rate, 16000) if spec.mode.encodes else None
    rs_out = StreamingResampler(16000, rate) if spec.decodes else None
    return Stream(1, spec, 0 if rs_in else None, 0 if rs_out else None, rs_in, rs_out, InputQueue(cap))


# ---------------------------------------------------------------- slot pool
def test_slot_pool_hands_out_what_each_mode_needs_and_takes_it_back() -> None:
    pool = SlotPool(2)
    assert pool.allocate(StreamSpec("encode", 16000, "f32", "balanced")) == (0, None, None)
    assert pool.allocate(StreamSpec("decode", 16000, "f32", "balanced")) == (None, 0, None)
    assert pool.allocate(StreamSpec("loopback", 16000, "f32", "balanced", want_audio=True)) == (1, 1, None)
    assert pool.allocate(StreamSpec("loopback", 16000, "f32", "low", want_audio=True)) == (0, 0, None)
    enc_free, dec_free = pool.pools("balanced")
    assert enc_free == dec_free == []
    with pytest.raises(WorkerFull):
        pool.allocate(StreamSpec("encode", 16000, "f32", "balanced"))
    with pytest.raises(WorkerFull):
        pool.allocate_room("balanced")
    st = _stream("loopback", want_audio=True)
    st.enc_slot, st.dec_slot, st.room_dec_slot = 1, 1, 0
    pool.release(st)
    assert (st.enc_slot, st.dec_slot, st.room_dec_slot) == (None, None, None)
    assert enc_free == [1] and sorted(dec_free) == [0, 1]
    pool.release(st)  # twice: nothing given back twice
    assert len(enc_free) == 1 and len(dec_free) == 2
    assert pool.allocate_room("balanced") in (0, 1)


def test_slot_pool_refusal_takes_nothing() -> None:
    pool = SlotPool(1)
    assert pool.allocate(StreamSpec("decode", 16000, "f32", "balanced")) == (None, 0, None)
    with pytest.raises(WorkerFull):  # an encoder slot is free, the decoder slot is not
        pool.allocate(StreamSpec("loopback", 16000, "f32", "balanced", want_audio=True))
    assert pool.pools("balanced") == ([0], [])


def test_slot_pool_publish_with_room_audio_takes_the_room_decoder_at_open() -> None:
    pool = SlotPool(1)
    spec = StreamSpec("publish", 16000, "f32", "balanced", room_audio=True)
    assert pool.allocate(spec) == (0, None, 0)
    with pytest.raises(WorkerFull):
        pool.allocate(spec)


# ---------------------------------------------------------------- input queues
def test_take_stops_at_the_cap_the_message_count_and_a_flush() -> None:
    st = _stream("encode", cap=800)
    for seq in range(3):
        st.inputs.push((AUDIO, np.zeros(500, "<f4"), seq), now=1.0)
    st.inputs.push((FLUSH,), now=1.0)
    t = take(st, max_chunks=0)  # 500 + 500 > 800: one message (a single one may exceed the cap)
    assert (len(t.audio), t.seq_end, t.flush) == (1, 0, False)
    t = take(st, max_chunks=0)
    assert (len(t.audio), t.seq_end, t.flush) == (1, 1, False)
    t = take(st, max_chunks=0)  # the last message and the flush behind it
    assert (len(t.audio), t.seq_end, t.flush) == (1, 2, True) and not st.inputs
    st.inputs.push((AUDIO, np.zeros(10, "<f4"), 3), now=1.0)
    st.inputs.push((FLUSH,), now=1.0)
    t = take(st, max_chunks=1)  # the flush counts as a message: it gets a take of its own
    assert (len(t.audio), t.flush) == (1, False) and take(st, max_chunks=1).flush


def test_take_of_codes_ends_at_the_last_frame_and_snapshots_the_room() -> None:
    st = _stream("decode")
    st.inputs.push((CODES, np.zeros((4, 3), np.int64), 10), now=0.0)
    st.inputs.push((CODES, np.zeros((4, 2), np.int64), 13), now=0.0)
    t = take(st, max_chunks=0)
    assert t.seq_end == 14 and len(t.codes) == 2 and t.listeners is None
    pub = _stream("publish")
    pub.room_dec_slot, pub.room_dec_reset = 3, True
    pub.listeners[7] = Listener(7, StreamingResampler(16000, 16000), "f32")
    pub.inputs.push((AUDIO, np.zeros(10, "<f4"), 0), now=0.0)
    t = take(pub, max_chunks=0)
    pub.listeners.clear()  # the event loop detaches: this tick still serves the snapshot
    assert (t.room_slot, t.room_reset, list(t.listeners)) == (3, True, [7])


def test_step_cap_and_awaited() -> None:
    class Config:
        frame_rate = 50

    assert step_cap(StreamSpec("loopback", 48000, "s16", "balanced"), 100.0, Config()) == 4800
    assert step_cap(StreamSpec("decode", 16000, "f32", "balanced"), 100.0, Config()) == 5
    assert step_cap(StreamSpec("relay", 16000, "f32", "balanced"), 1.0, Config()) == 1
    st = _stream("encode")
    assert not awaited(st, 0.1)  # not opened yet
    st.opened = True
    st.inputs.push((AUDIO, np.zeros(1, "<f4"), 0), now=0.0)
    assert not awaited(st, 0.1)  # has input
    st.inputs.clear()
    assert awaited(st, 0.1) and not awaited(st, 0.3)  # sending, then gone quiet (LIVE_S)


# ---------------------------------------------------------------- output shaping
def test_slot_outputs_join_the_step_and_the_flush() -> None:
    a, b = np.ones((2, 3), np.int32), np.zeros((2, 1), np.int32)
    assert slot_codes({}, {}, 0) is None
    got = slot_codes({0: a}, {0: b}, 0)
    assert got.dtype == np.int64 and got.shape == (2, 4)
    assert slot_codes({0: a}, {}, 0).shape == (2, 3)
    audio = slot_audio({}, {5: np.ones((1, 4), np.float64)}, 5)
    assert audio.dtype == np.float32 and audio.shape == (4,)


def test_finish_truncates_loopback_to_the_input_and_counts_on_the_flush() -> None:
    st = _stream("loopback", rate=48000, fmt="s16", want_audio=True)
    st.n_in, st.n16_in = 4800, 1600  # 100 ms went in
    t = take(st, max_chunks=0)
    t.flush, t.audio16 = True, np.full(2 * FRAME * 3, 0.25, np.float32)  # a whole padded frame more came out
    r = StepResult(seq_end=None)
    finish(t, np.arange(12, dtype=np.int64).reshape(4, 3), r)
    assert r.codes.dtype == np.uint16 and r.frame == 0 and st.frames_out == 3
    assert r.audio.dtype == np.dtype("<i2") and r.audio.size == 4800 and r.sample == 0
    assert st.n16_out == 1600 and st.done
    assert r.done == {"samples_in": 4800, "samples_out": 4800, "frames_out": 3}


def test_finish_resamples_room_audio_for_each_listener() -> None:
    st = _stream("publish")
    lst = Listener(9, StreamingResampler(16000, 16000), "s16")
    st.inputs.push((AUDIO, np.zeros(1, "<f4"), 0), now=0.0)
    st.listeners[9] = lst
    t = take(st, max_chunks=0)
    t.audio16 = np.full(FRAME, 0.5, np.float32)
    r = StepResult()
    finish(t, None, r)
    assert list(r.listeners) == [9] and r.listeners[9][0] == 0 and r.listeners[9][1].dtype == np.dtype("<i2")
    assert lst.n_out == FRAME and st.room16_out == FRAME and r.audio is None and r.done is None


def test_stream_info_latency_by_mode() -> None:
    model = FakeModel()
    enc, dec = model.streaming_encoder(1), model.streaming_decoder(1)  # 60 and 40 ms ("balanced")
    info = stream_info(model.config, enc, dec, _stream("loopback", want_audio=True))
    assert info == EngineInfo(4, 100.0, 60.0, 40.0, 2, FRAME)
    assert stream_info(model.config, enc, dec, _stream("loopback")).latency_ms == 60.0
    assert stream_info(model.config, enc, dec, _stream("publish")).latency_ms == 60.0  # listeners add theirs
    decode = stream_info(model.config, enc, dec, _stream("decode", bandwidth=0.5))
    assert (decode.n_q, decode.latency_ms, decode.encoder_latency_ms) == (1, 40.0, 0.0)
    resampled = stream_info(model.config, enc, dec, _stream("encode", rate=48000))
    assert resampled.latency_ms > 60.0  # + the input resampler's


# ---------------------------------------------------------------- the tick runner, with the fake codec
def _unstarted(capacity: int = 4, **kw) -> tuple[Worker, list]:
    """A worker whose ticks the test runs itself (no thread): its engines built, results collected."""
    results: list = []
    w = Worker(FakeModel(), results.extend, capacity=capacity, preload=("balanced",), **kw)
    w._engines.preload(w.preload)
    return w, results


def _tick(w: Worker) -> dict[int, StepResult]:
    return dict(w._runner.run())


def test_tick_runner_opens_steps_and_flushes_like_the_engine_alone() -> None:
    w, _ = _unstarted(max_chunks_per_step=1)
    x = np.sin(np.arange(3 * 800) / 30.0).astype("<f4")
    fut = w.open(1, StreamSpec("loopback", 16000, "f32", "balanced", want_audio=True))
    assert not w._runner.run() and fut.result(0).frame_size == FRAME  # the first tick answers the open
    for seq in range(3):
        w.push_audio(1, seq, x[seq * 800 : (seq + 1) * 800])
    w.flush(1)
    got = [_tick(w)[1] for _ in range(4)]
    assert [r.seq_end for r in got] == [0, 1, 2, None] and got[-1].done["samples_out"] == x.size
    assert not w._runner.has_work()
    codes, audio = local_run(FakeModel(), [x[i : i + 800] for i in range(0, x.size, 800)])
    np.testing.assert_array_equal(np.concatenate([r.codes for r in got if r.codes is not None], -1), codes)
    np.testing.assert_array_equal(np.concatenate([r.audio for r in got if r.audio is not None]), audio)


@pytest.mark.parametrize("atomic", [True, False])
def test_tick_runner_sheds_the_newest_half_on_out_of_memory(atomic: bool) -> None:
    w, _ = _unstarted()
    spec = StreamSpec("encode", 16000, "f32", "balanced")
    for sid in range(4):
        w.open(sid, spec)
    w._runner.run()
    enc = w._engines.enc["balanced"]
    enc.oom_over, enc.atomic_steps = 2, atomic
    for sid in range(4):
        w.push_audio(sid, 0, np.zeros(FRAME * 4, "<f4"))
    res = _tick(w)
    assert [res[s].error for s in (2, 3)] == ["server_busy"] * 2
    want = None if atomic else "internal"  # half-stepped slots cannot be trusted
    assert [res[s].error for s in (0, 1)] == [want] * 2
    if atomic:
        assert all(res[s].codes is not None for s in (0, 1)) and res[0].consumed == FRAME * 4


def test_tick_runner_frees_a_cancelled_open_and_a_closed_stream() -> None:
    w, _ = _unstarted(capacity=1)
    spec = StreamSpec("encode", 16000, "f32", "balanced")
    assert w.open(1, spec).cancel()
    with pytest.raises(WorkerFull):
        w.open(2, spec)
    assert w._runner.has_work()
    w._runner.run()  # the cancelled open's slot goes back
    fut = w.open(2, spec)
    w._runner.run()
    assert fut.result(0).n_q == 4
    w.close(2)
    assert w._runner.has_work()
    w._runner.run()
    assert not w._streams and w.open(3, spec) is not None
