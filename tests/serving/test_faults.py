"""Faults in the codec step: out-of-memory sheds the newest sessions of the batch (server_busy, 1013) and the
rest go on with exact output; the worker keeps serving."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from fakes import FakeModel, local_run
from serving_helpers import running_server, speech

from xcodec_stream.clients.client import Client, ServerError, stream


async def _four_streams_in_one_batch(srv, x: np.ndarray, first: threading.Event, gate: threading.Event):
    """Four clients stream `x`: the first alone until its step has the worker waiting on `gate` (which the
    caller's engine hook does once `first` is set), then the three others queue input, and `gate` opens so
    that the next step batches all four. Returns the clients and what `stream` gave (or raised) for each."""
    clients = [await Client.connect(srv.url, want=["audio", "codes"]) for _ in range(4)]
    tasks = [asyncio.create_task(stream(clients[0], x, chunk_ms=100))]
    while not first.is_set():  # the worker is held in a step of the first session alone
        await asyncio.sleep(0.01)
    tasks += [asyncio.create_task(stream(c, x, chunk_ms=100)) for c in clients[1:]]
    while any(c.seq < 2 for c in clients):
        await asyncio.sleep(0.01)
    gate.set()
    return clients, await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("atomic", [True, False])
async def test_out_of_memory_sheds_the_newest_sessions(atomic: bool) -> None:
    x = speech(seconds=0.6)
    async with running_server(FakeModel(), max_chunks_per_step=1) as srv:
        enc = next(iter(srv.worker._engines.enc.values()))
        step = enc.step_slots
        gate, first = threading.Event(), threading.Event()

        def gated(inputs):  # the first step waits until every session has input queued: one batch of 4 next
            if not first.is_set():
                first.set()
                gate.wait(5)
            return step(inputs)

        enc.step_slots = gated
        enc.oom_over = 2  # a batch of more than 2 sessions runs out of memory
        enc.atomic_steps = atomic
        clients, results = await _four_streams_in_one_batch(srv, x, first, gate)
        for c, r in zip(clients, results, strict=True):
            if isinstance(r, ServerError):  # the close frame follows the error message
                await asyncio.wait_for(c.ws.wait_closed(), 10)
        codes = [c.ws.close_code for c in clients]
        for c in clients:
            await c.close()
        # the worker goes on: a new session after the shedding is served in full
        enc.oom_over = None
        c = await Client.connect(srv.url)
        after = await stream(c, x)
        await c.close()
        metrics = srv.metrics.render().decode()
    assert after.done["samples_out"] == x.size
    newest = results[2:]
    assert all(isinstance(r, ServerError) and r.code == "server_busy" for r in newest), newest
    assert codes[2:] == [1013, 1013]
    assert 'xcodec_stream_errors_total{code="server_busy"} 2.0' in metrics
    if atomic:  # the two oldest went on, with complete and exact output
        want_codes, want_audio = local_run(FakeModel(), [x])
        for r in results[:2]:
            assert r.done["samples_in"] == r.done["samples_out"] == x.size and not r.errors
            np.testing.assert_array_equal(r.codes, want_codes)
            np.testing.assert_array_equal(r.audio, want_audio)
        assert codes[:2] == [None, None]  # still open until the client closes
    else:  # their slots may be half-stepped: failed as internal rather than continued with wrong state
        assert all(isinstance(r, ServerError) and r.code == "internal" for r in results[:2])
        assert codes[:2] == [1011, 1011]


async def test_out_of_memory_with_the_real_engine_retries_the_oldest_exactly(tiny_model) -> None:
    """random:tiny's engines: a batch of more than 2 encoder rows runs out of memory part-way through a
    step (after its first internal call committed); the newest half is shed and the two oldest are retried
    from the state `atomic` restored: their output equals the engine run alone, sample for sample."""
    x = speech(seconds=0.6)
    async with running_server(tiny_model, max_sessions=4, max_chunks_per_step=1) as srv:
        enc = next(iter(srv.worker._engines.enc.values()))
        assert enc.atomic_steps
        run, gate, first = enc._run, threading.Event(), threading.Event()

        def failing(rows, *args, **kwargs):
            if not first.is_set():  # hold the worker until every session has input queued
                first.set()
                gate.wait(5)
            out = run(rows, *args, **kwargs)  # commits, then the batch runs out of memory
            if len(rows) > 2:
                raise MemoryError("simulated out-of-memory")
            return out

        enc._run = failing
        clients, results = await _four_streams_in_one_batch(srv, x, first, gate)
        for c in clients:
            await c.close()
    assert all(isinstance(r, ServerError) and r.code == "server_busy" for r in results[2:]), results[2:]
    chunk = int(0.1 * 16000)
    want_codes, want_audio = local_run(
        tiny_model, [x[i : i + chunk] for i in range(0, x.size, chunk)], capacity=4
    )
    for r in results[:2]:
        assert not isinstance(r, BaseException), r
        assert r.done["samples_in"] == r.done["samples_out"] == x.size and not r.errors
        np.testing.assert_array_equal(r.codes, want_codes)
        np.testing.assert_allclose(r.audio, want_audio, atol=1e-6)
