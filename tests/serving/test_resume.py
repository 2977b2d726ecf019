"""Session resume: a connection killed mid-stream, a reconnect with the resume token, and output that is complete,
in order and never duplicated (bit for bit equal to an uninterrupted run)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from fakes import FakeModel, local_run
from serving_helpers import Raw, audio, frame, running_server, speech

from xcodec_stream.clients.client import Client, ServerError, stream


def chunked(x: np.ndarray, n: int) -> list[np.ndarray]:
    return [x[i : i + n] for i in range(0, x.size, n)]


def resume_hello(token: str, **kw) -> bytes:
    return frame(type="hello", version=1, resume=token, **kw)


def pcm_of(msg: dict) -> np.ndarray:
    return np.frombuffer(msg["pcm"]["data"], "<f4")


async def test_client_resumes_after_abrupt_drops_bit_exact(tiny_model) -> None:
    """The TCP connection is aborted twice mid-stream (no close frame); the client library reconnects with
    its token, resends what the server had not received, and the result equals the engine run locally on
    the same chunks: codes and audio bit for bit, exact length, no sample received twice."""
    x = speech(seconds=1.2)
    chunks = chunked(x, 1600)
    received = {"audio": 0, "codes": 0, "resumed": 0, "audio_msgs": 0}
    async with running_server(tiny_model, max_sessions=4, max_chunks_per_step=1) as srv:
        client = await Client.connect(srv.url, want=["audio", "codes"], resume=True)
        assert client.auto_resume and len(client.token) >= 22

        def on_message(msg: dict) -> None:
            kind = msg["type"]
            if kind == "audio":
                received["audio"] += msg["pcm"].size
                received["audio_msgs"] += 1
                if received["audio_msgs"] in (2, 5):  # kill the connection after the 2nd and 5th audio
                    client.ws.transport.abort()
            elif kind == "codes":
                received["codes"] += msg["codes"].shape[-1]
            elif kind == "resumed":
                received["resumed"] += 1

        r = await stream(client, x, chunks=[c.size for c in chunks], on_message=on_message)
        await client.close()
        assert srv.metrics.resumes._value.get() == client.resumes
    codes, out = local_run(tiny_model, chunks, capacity=4, slot=0)
    assert client.resumes == 2 and received["resumed"] == 2
    assert r.done["samples_in"] == r.done["samples_out"] == x.size == received["audio"]
    assert r.done["frames_out"] == codes.shape[1] == received["codes"] and r.done["dropped"] == 0
    np.testing.assert_array_equal(r.codes, codes)
    np.testing.assert_array_equal(r.audio, out)
    assert not r.errors


async def test_raw_resume_replays_unacked_output_once() -> None:
    """By hand: the client acks part of what it received, the connection dies, and the resume says which
    seq to send next and replays exactly the output after the client's position. The output made while
    the connection was down (far more than max_output_queue_ms) is kept whole: nothing dropped."""
    x = speech(seconds=1.0)
    pieces = chunked(x, 800)  # 50 ms each
    model = FakeModel()
    async with running_server(model, max_output_queue_ms=250, max_chunks_per_step=1) as srv:
        enc = next(iter(srv.worker._engines.enc.values()))
        step = enc.step_slots

        def slow(inputs):  # 30 ms a step: the output is made while the client is away
            time.sleep(0.03)
            return step(inputs)

        enc.step_slots = slow
        got: dict[int, np.ndarray] = {}
        r = Raw(await _connect(srv.url))
        await r.send(frame(type="hello", version=1, mode="loopback"))
        token = (await r.recv())["resume_token"]
        for seq in range(15):
            await r.send(audio(seq, pieces[seq]))
        while sum(p.size for p in got.values()) < 3 * 800:
            msg = await r.until("audio")
            got[msg["sample"]] = pcm_of(msg)
        end = max(k + v.size for k, v in got.items())
        await r.send(frame(type="ack", sample=end))
        r.ws.transport.abort()
        session = next(iter(srv.sessions.values()))
        while session.attached or session.lag_ms > 0:
            await asyncio.sleep(0.02)
        assert (
            srv.health()["sessions_detached"] == 1 and session.out.pinned_ms > srv.config.max_output_queue_ms
        )
        r2 = Raw(await _connect(srv.url))
        await r2.send(resume_hello(token, sample=end))
        resumed = await r2.recv()
        assert resumed["type"] == "resumed" and resumed["state"] == "ready"
        assert resumed["next_seq"] == 15 and resumed["sample"] == end and resumed["dropped"] == 0
        for seq in range(15, len(pieces)):
            await r2.send(audio(seq, pieces[seq]))
        await r2.send(frame(type="flush"))
        while True:
            msg = await r2.recv()
            if msg["type"] == "audio":
                assert msg["sample"] not in got, "output sent twice"
                got[msg["sample"]] = pcm_of(msg)
            elif msg["type"] == "done":
                break
        await r2.ws.close()
    _, want = local_run(FakeModel(), [x])
    starts = sorted(got)
    assert starts[0] == 0 and all(a + got[a].size == b for a, b in zip(starts, starts[1:], strict=False))
    y = np.concatenate([got[k] for k in starts])
    assert msg["samples_out"] == x.size == y.size and msg["dropped"] == 0
    np.testing.assert_array_equal(y, want)


async def test_resume_after_flush_gets_the_rest_and_done() -> None:
    """The connection dies after `done` was handed to it but before the client read anything: the resume
    replays all the output (none was acknowledged) and `done` once more."""
    x = speech(seconds=0.5)
    async with running_server(FakeModel()) as srv:
        r = Raw(await _connect(srv.url))
        await r.send(frame(type="hello", version=1, mode="loopback"))
        token = (await r.recv())["resume_token"]
        await r.send(audio(0, x))
        await r.send(frame(type="flush"))
        while next(iter(srv.sessions.values())).done_sent is False:
            await asyncio.sleep(0.01)
        r.ws.transport.abort()
        await asyncio.sleep(0.1)
        r2 = Raw(await _connect(srv.url))
        await r2.send(resume_hello(token, sample=0))
        resumed = await r2.recv()
        assert resumed["state"] == "done" and resumed["sample"] == 0
        kinds, n = [], 0
        while True:
            msg = await r2.recv()
            kinds.append(msg["type"])
            if msg["type"] == "audio":
                n += msg["pcm"]["shape"][0]
            if msg["type"] == "done":
                break
        assert n == x.size == msg["samples_out"] and kinds.count("done") == 1
        await r2.ws.close()


async def test_resume_replaces_a_connection_still_open() -> None:
    """A resume while the old connection is still open (a half-open TCP the server has not noticed): the old
    one gets resumed_elsewhere / 4001 and the new one goes on to a complete result."""
    x = speech(seconds=0.6)
    async with running_server(FakeModel()) as srv:
        old = await Client.connect(srv.url, resume=False)
        token = old.token
        await old.send_audio(x[:4800])
        await asyncio.sleep(0.1)
        new = Raw(await _connect(srv.url))
        await new.send(resume_hello(token))
        resumed = await new.recv()
        assert resumed["type"] == "resumed" and resumed["next_seq"] == 1
        with pytest.raises(ServerError) as info:
            while True:
                await old.recv()
        assert info.value.code == "resumed_elsewhere"
        await asyncio.wait_for(old.ws.wait_closed(), 10)
        assert old.ws.close_code == 4001
        await new.send(audio(1, x[4800:]))
        await new.send(frame(type="flush"))
        done = await new.until("done")
        assert done["samples_in"] == done["samples_out"] == x.size
        await new.ws.close()


async def test_bad_and_expired_tokens_and_normal_close() -> None:
    async with running_server(FakeModel(), resume_grace_s=0.3) as srv:
        r = Raw(await _connect(srv.url))
        await r.send(resume_hello("not-a-token"))
        msg = await r.recv()
        assert (msg["code"], msg["fatal"]) == ("resume_failed", True) and await r.closed() == 4005

        # dropped, then the grace period passes: the session is gone
        c = await Client.connect(srv.url)
        await c.send_audio(np.zeros(320, np.float32))
        c.ws.transport.abort()
        await asyncio.sleep(0.8)
        assert not srv.sessions
        r = Raw(await _connect(srv.url))
        await r.send(resume_hello(c.token))
        assert (await r.recv())["code"] == "resume_failed" and await r.closed() == 4005

        # closed normally (1000): the session ends at once
        c = await Client.connect(srv.url)
        await c.close()
        await asyncio.sleep(0.1)
        assert not srv.sessions
        r = Raw(await _connect(srv.url))
        await r.send(resume_hello(c.token))
        assert (await r.recv())["code"] == "resume_failed"

        # a position past what was sent is not this session's client
        c = await Client.connect(srv.url)
        c.ws.transport.abort()
        await asyncio.sleep(0.1)
        r = Raw(await _connect(srv.url))
        await r.send(resume_hello(c.token, sample=10**6))
        assert (await r.recv())["code"] == "resume_failed"


async def test_resume_disabled() -> None:
    async with running_server(FakeModel(), resume_grace_s=0) as srv:
        c = await Client.connect(srv.url, resume=True)
        assert c.token is None and not c.auto_resume and "resume_token" not in c.ready
        c.ws.transport.abort()
        await asyncio.sleep(0.1)
        assert not srv.sessions


async def test_detached_session_holds_its_slot_then_frees_it() -> None:
    """A detached session counts against max_sessions until its grace ends; its own resume gets in even
    when the server is full."""
    async with running_server(FakeModel(), max_sessions=1, resume_grace_s=5) as srv:
        c = await Client.connect(srv.url, resume=True)
        c.ws.transport.abort()
        await asyncio.sleep(0.1)
        with pytest.raises(ServerError) as info:
            await Client.connect(srv.url)
        assert info.value.code == "server_full"
        r = Raw(await _connect(srv.url))
        await r.send(resume_hello(c.token))
        assert (await r.recv())["type"] == "resumed"
        await r.ws.close()


async def _connect(url: str):
    from websockets.asyncio.client import connect

    return await connect(url, compression=None, max_size=None)
