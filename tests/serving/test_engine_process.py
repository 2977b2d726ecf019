"""The worker in engine processes ([worker] processes = N): the same daemon behaviour as the worker thread, the
engines' faults confined to their own streams, and processes that go away with the daemon."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from fakes import FRAME, FakeDecoder, FakeModel, local_run
from serving_helpers import running_server, speech

from xcodec_stream.clients.client import Client, ServerError, listen, stream
from xcodec_stream.serving.worker import StreamSpec, WorkerFull
from xcodec_stream.serving.worker import pool as pool_module
from xcodec_stream.serving.worker.pool import EnginePool
from xcodec_stream.streaming.resample import resample


def chunked(x: np.ndarray, n: int) -> list[np.ndarray]:
    return [x[i : i + n] for i in range(0, x.size, n)]


async def health(srv) -> tuple[int, dict]:
    return await asyncio.to_thread(_get_health, srv.url.replace("ws", "http", 1) + "/healthz")


def _get_health(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_loopback_encode_decode_in_two_engine_processes() -> None:
    """Streams spread over two processes give what the engine gives when driven directly."""
    x = speech()
    async with running_server(FakeModel(), engine_processes=2) as srv:
        status, h = await health(srv)
        assert status == 200 and h["status"] == "ok" and len(h["engine_pids"]) == 2
        assert os.getpid() not in h["engine_pids"]

        async def loopback() -> object:
            c = await Client.connect(srv.url, mode="loopback", want=["audio", "codes"])
            r = await stream(c, x, chunks=[c_.size for c_ in chunked(x, 320)])
            await c.close()
            return r

        runs = await asyncio.gather(loopback(), loopback(), loopback())  # both processes get streams
        assert all(e.ticks > 0 for e in srv.worker.engines)  # both processes stepped streams
        for _ in range(50):  # sessions end just after their clients close
            if all(e.streams == 0 for e in srv.worker.engines):
                break
            await asyncio.sleep(0.1)
        assert [e.streams for e in srv.worker.engines] == [0, 0]  # each closed where it was opened
        enc = await Client.connect(srv.url, mode="encode", bandwidth=1.0)
        e = await stream(enc, x, chunk_ms=40)
        await enc.close()
        dec = await Client.connect(srv.url, mode="decode", bandwidth=1.0)
        d = await stream(dec, codes=e.codes, chunk_ms=60)
        await dec.close()
        assert (await health(srv))[1]["worker"]["ticks"] > 0
    codes, audio = local_run(FakeModel(), chunked(x, 320))
    for r in runs:
        assert r.done["samples_in"] == r.done["samples_out"] == x.size
        np.testing.assert_array_equal(r.codes, codes)
        np.testing.assert_array_equal(r.audio, audio)
    np.testing.assert_array_equal(
        e.codes, local_run(FakeModel(), chunked(x, 640), bandwidth=1.0, decode=False)[0]
    )
    ref = FakeDecoder(1)
    want = np.concatenate([ref.step_slots({0: e.codes})[0], ref.flush_slots([0])[0]])
    assert d.done["samples_out"] == e.codes.shape[1] * FRAME
    np.testing.assert_array_equal(d.audio, want)


async def test_room_listeners_hear_the_publisher_across_processes() -> None:
    """A room's decoder lives in its publisher's process: listeners attach there, whichever process is less
    loaded when they join."""
    x = speech(seconds=1.5)
    async with running_server(FakeModel(), engine_processes=2) as srv:
        pub = await Client.connect(srv.url, mode="publish", room="live")
        hearers = [
            await Client.connect(srv.url, mode="listen", room="live", want=["audio"]) for _ in range(2)
        ]
        tasks = [asyncio.create_task(listen(h)) for h in hearers]
        r = await stream(pub, x, chunk_ms=40)
        await pub.close()
        heard = await asyncio.gather(*tasks)
    _, audio = local_run(FakeModel(), [x])
    assert r.done["samples_in"] == x.size
    for h in heard:
        assert h.audio.size > 0.8 * x.size
        np.testing.assert_allclose(h.audio, audio[: h.audio.size], atol=1e-6)


async def test_a_dead_engine_process_fails_its_streams_and_is_replaced(monkeypatch) -> None:
    monkeypatch.setattr(pool_module, "RESTART_DELAYS_S", (3.0,))  # long enough to see the daemon degraded
    x = speech(seconds=3.0)
    async with running_server(FakeModel(), engine_processes=1) as srv:
        c = await Client.connect(srv.url, mode="loopback")
        os.kill(srv.worker.pids[0], signal.SIGKILL)
        with pytest.raises(ServerError) as err:
            await stream(c, x, chunk_ms=40)
        assert err.value.code == "internal"
        status, h = await until(srv, "engine_down")
        assert status == 503
        with pytest.raises(ServerError) as err:  # new streams are refused with a reason, not left hanging
            await Client.connect(srv.url, mode="loopback")
        assert err.value.code == "internal" and "engine process" in err.value.message

        status, h = await until(srv, "ok")  # a new engine process took its place
        assert status == 200 and h["worker"]["engine_restarts"] == 1
        c = await Client.connect(srv.url, mode="loopback", want=["audio", "codes"])
        r = await stream(c, x, chunk_ms=40)
        await c.close()
    assert r.done["samples_out"] == x.size and not r.errors


async def test_a_stalled_engine_process_does_not_stall_the_daemon() -> None:
    """The daemon queues its calls for a writer thread: with the engine process stopped (SIGSTOP) and more
    audio coming than the pipe holds, the event loop still answers; once the engine resumes, the stream
    completes. A watchdog thread asks /healthz (answered only if the event loop runs) and then resumes the
    engine, so a blocked loop fails this test instead of hanging it."""
    x = resample(speech(seconds=3.5), 16000, 48000)  # 670 kB of float32 PCM: more than the pipe's buffer
    seen: dict = {}
    async with running_server(FakeModel(), engine_processes=1) as srv:
        pid = srv.worker.pids[0]
        url = srv.url.replace("ws", "http", 1) + "/healthz"

        def watchdog() -> None:
            time.sleep(1.5)
            try:
                seen["status"] = _get_health(url, timeout=3.0)[0]
            except OSError as exc:
                seen["error"] = repr(exc)
            finally:
                os.kill(pid, signal.SIGCONT)

        c = await Client.connect(srv.url, mode="loopback", sample_rate=48000)
        os.kill(pid, signal.SIGSTOP)
        dog = threading.Thread(target=watchdog)
        dog.start()
        r = await asyncio.wait_for(stream(c, x, chunk_ms=20), 60)  # as fast as it can
        await asyncio.to_thread(dog.join)
        await c.close()
    assert seen == {"status": 200}
    assert r.done["samples_in"] == r.done["samples_out"] == x.size and not r.errors


async def until(srv, status: str, timeout_s: float = 60.0) -> tuple[int, dict]:
    for _ in range(int(timeout_s / 0.1)):
        code, h = await health(srv)
        if h["status"] == status:
            return code, h
        await asyncio.sleep(0.1)
    raise AssertionError(f"/healthz never said {status!r}: {h}")


async def test_engine_processes_end_with_the_daemon() -> None:
    async with running_server(FakeModel(), engine_processes=2) as srv:
        procs = [e._proc for e in srv.worker.engines]
        assert all(p.is_alive() for p in procs)
    assert [p.exitcode for p in procs] == [0, 0]


def test_full_comes_back_through_the_future() -> None:
    """A Worker raises WorkerFull at once; an engine process answers it through the open's future."""
    results: list = []
    pool = EnginePool(FakeModel(), results.extend, processes=1, capacity=1, preload=("balanced",))
    pool.start()
    try:
        spec = StreamSpec("encode", 16000, "f32", "balanced")
        assert pool.open(1, spec).result(30).n_q == FakeModel().config.num_quantizers
        with pytest.raises(WorkerFull):
            pool.open(2, spec).result(30)
        pool.close(1)
    finally:
        pool.stop()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_engine_process_on_cuda_shares_the_models_weights() -> None:
    """A CUDA model reaches its engine process by IPC handle (no second copy): loopback there gives what the
    worker thread gives on the same model."""
    import warnings

    from xcodec_stream.model.xcodec import XcodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        model = XcodecModel.from_pretrained("random:tiny", device="cuda")
    x = speech(seconds=2.0)
    out = {}
    for processes in (0, 1):
        async with running_server(model, engine_processes=processes, max_chunks_per_step=1) as srv:
            c = await Client.connect(srv.url, mode="loopback", want=["audio", "codes"])
            out[processes] = await stream(c, x, chunk_ms=80)
            await c.close()
    np.testing.assert_array_equal(out[1].codes, out[0].codes)
    np.testing.assert_allclose(out[1].audio, out[0].audio, atol=1e-5)
