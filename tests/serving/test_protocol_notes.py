"""Behaviours docs/PROTOCOL.md spells out for client writers (a third-party client ran into each): the
errors of a rate-limited chunk, what a 1009 close leaves behind, where a late listener's audio starts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from fakes import FRAME, LOOKAHEAD, FakeModel, local_run
from serving_helpers import HELLO, Raw, audio, frame, raw, running_server, speech
from websockets.asyncio.client import connect

from xcodec_stream.clients.client import Client, listen


async def test_rate_limited_chunk_has_no_seq_and_later_chunks_get_bad_seq() -> None:
    """A refused chunk does not use up its seq: chunks already sent after it are refused too (rate_limited
    while the bucket is empty, bad_seq once it refills), and no error names a seq; resending from the
    first refused seq goes on."""
    async with running_server(FakeModel(), max_messages_per_second=2, message_burst=3) as srv:
        async with raw(srv.url) as r:  # hello took one token of three
            chunk = np.zeros(320, "<f4")
            for seq in range(4):  # 0 and 1 taken, 2 and 3 refused
                await r.send(audio(seq, chunk))
            errors = [await r.until("error") for _ in range(2)]
            assert [e["code"] for e in errors] == ["rate_limited", "rate_limited"]
            await asyncio.sleep(0.6)  # one token back
            await r.send(audio(3, chunk))  # the next chunk the client had in flight
            errors.append(await r.until("error"))
            assert errors[-1]["code"] == "bad_seq"
            assert all(set(e) == {"type", "code", "message", "fatal"} for e in errors)  # no seq anywhere
            await asyncio.sleep(0.6)
            await r.send(audio(2, chunk))  # resend from the first refused seq
            await asyncio.sleep(0.6)
            await r.send(frame(type="flush"))
            done = await r.until("done")
            assert done["samples_in"] == 3 * 320


async def test_1009_close_keeps_the_session_and_its_slot_for_a_resume() -> None:
    """A frame over max_message_bytes is closed by the WebSocket layer (1009), which is not a normal closure
    from the client: the session is kept for resume_grace_s, holds its slot meanwhile, and can be resumed."""
    async with running_server(FakeModel(), max_message_bytes=64 * 1024, max_sessions=2) as srv:
        async with raw(srv.url, hello=None) as r:
            await r.send(HELLO)
            ready = await r.recv()
            await r.send(audio(0, np.zeros(20000, "<f4")))  # 80 kB
            assert await r.closed() == 1009
        for _ in range(100):
            if srv.resumes.detached:
                break
            await asyncio.sleep(0.02)
        assert srv.resumes.detached == 1 and len(srv.sessions) == 1  # one of the two slots still taken
        async with connect(srv.url, compression=None) as ws:
            await ws.send(frame(type="hello", version=1, resume=ready["resume_token"]))
            resumed = await Raw(ws).recv()
            assert resumed["type"] == "resumed" and resumed["next_seq"] == 0


@pytest.mark.parametrize("decoder_running", [False, True])
async def test_late_listener_audio_start(decoder_running: bool) -> None:
    """Codes start exactly at `room.frame`. Audio starts where the room's decoder stands when the listener
    joins: at room.frame * frame_size if it is the room's first listener wanting audio (the decoder starts
    with it), else `decoder_latency_ms` of codec samples earlier (its `sample` counts from 0 either way)."""
    x = speech(seconds=2.0)  # 100 whole frames: the room's audio is exactly x.size long
    chunks = [x[i : i + FRAME] for i in range(0, x.size, FRAME)]
    # The publisher sends faster than real time: under CPU load a listener's queue of codes and audio can pass
    # the default 2 s output bound and lose its oldest messages (that policy is tested elsewhere): out of the
    # way here, and nothing may be dropped.
    async with running_server(FakeModel(), max_output_queue_ms=60_000.0) as srv:
        pub = await Client.connect(srv.url, mode="publish", room="r", want=["codes"])
        early = []
        if decoder_running:
            early_listener = await Client.connect(srv.url, mode="listen", room="r", want=["audio"])
            early.append(asyncio.create_task(listen(early_listener)))
        first = 50
        for c in chunks[:first]:
            await pub.send_audio(c)
        frames = 0
        while frames < first - LOOKAHEAD["balanced"]:  # the room has broadcast every frame it can so far
            msg = await pub.recv()
            frames += msg["codes"].shape[1] if msg["type"] == "codes" else 0
        late = await Client.connect(srv.url, mode="listen", room="r", want=["audio", "codes"])
        task = asyncio.create_task(listen(late))
        for c in chunks[first:]:
            await pub.send_audio(c)
        await pub.flush()
        result = await task
        await asyncio.gather(*early)
    codes, audio16 = local_run(FakeModel(), chunks)
    start = result.room["frame"]
    assert start == frames
    assert result.done["dropped"] == 0
    np.testing.assert_array_equal(result.codes, codes[:, start:])
    lead = int(result.room["decoder_latency_ms"] * 16)  # codec samples at 16 kHz
    assert lead == LOOKAHEAD["balanced"] * FRAME
    s0 = audio16.size - result.audio.size
    assert s0 == start * FRAME - (lead if decoder_running else 0)
    np.testing.assert_array_equal(result.audio, audio16[s0:])
