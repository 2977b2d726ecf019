"""Bad input and misbehaving clients: each gets its stable error code (and close code when fatal) while a
well-behaved session running at the same time still finishes with correct, complete output."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import numpy as np
import pytest
from fakes import FakeModel, local_run
from serving_helpers import HELLO, Raw, audio, frame, raw, running_server, speech
from websockets.exceptions import ConnectionClosed

from xcodec_stream.clients.client import Client, ServerError, stream
from xcodec_stream.serving.arrays import pack_array


@contextlib.asynccontextmanager
async def server_with_good_session(**overrides):
    """A daemon plus a real-time loopback session that must finish exactly while the test misbehaves."""
    x = speech(seconds=0.8)
    async with running_server(FakeModel(), **overrides) as srv:
        good = await Client.connect(srv.url, mode="loopback", want=["audio", "codes"])
        task = asyncio.create_task(stream(good, x, chunk_ms=20, realtime=True))
        yield srv
        r = await task
        await good.close()
    codes, out = local_run(FakeModel(), [x[i : i + 320] for i in range(0, x.size, 320)])
    assert r.done["samples_out"] == x.size and not r.errors
    np.testing.assert_array_equal(r.codes, codes)
    np.testing.assert_array_equal(r.audio, out)


async def expect_fatal(r: Raw, code: str, close_code: int) -> None:
    msg = await r.until("error")
    assert (msg["code"], msg["fatal"]) == (code, True), msg
    assert await r.closed() == close_code


async def expect_error(r: Raw, code: str) -> dict:
    msg = await r.until("error")
    assert (msg["code"], msg["fatal"]) == (code, False), msg
    return msg


async def still_works(r: Raw, seq: int = 0) -> None:
    """After a non-fatal error the session goes on: a chunk and a flush give complete output."""
    await r.send(audio(seq, np.zeros(800, "<f4")))
    await r.send(frame(type="flush"))
    done = await r.until("done")
    assert done["samples_in"] == done["samples_out"] == 800


# ------------------------------------------------------------------------------ fatal: closed with a code
async def test_non_msgpack_bytes() -> None:
    async with server_with_good_session() as srv, raw(srv.url) as r:
        await r.send(b"\xc1\x00garbage")
        await expect_fatal(r, "bad_message", 1007)


async def test_text_frame() -> None:
    async with server_with_good_session() as srv, raw(srv.url) as r:
        await r.send('{"type": "hello"}')
        await expect_fatal(r, "bad_message", 1003)


async def test_wrong_protocol_version() -> None:
    async with server_with_good_session() as srv, raw(srv.url, hello=None) as r:
        await r.send(frame(type="hello", version=99, mode="loopback"))
        await expect_fatal(r, "unsupported_version", 1002)


async def test_audio_before_hello() -> None:
    async with server_with_good_session() as srv, raw(srv.url, hello=None) as r:
        await r.send(audio(0, np.zeros(320, "<f4")))
        await expect_fatal(r, "bad_state", 1002)


@pytest.mark.parametrize("rate", [0, 100, 7999, 48001, 10**9])
async def test_absurd_sample_rate(rate: int) -> None:
    async with server_with_good_session() as srv, raw(srv.url, hello=None) as r:
        await r.send(frame(type="hello", version=1, mode="loopback", sample_rate=rate))
        await expect_fatal(r, "bad_field", 1002)


async def test_bad_hello_fields() -> None:
    async with server_with_good_session() as srv:
        for bad in (
            frame(type="hello", version=1),  # mode missing
            frame(type="hello", version=1, mode="loopback", sample_rate="16k"),
            frame(type="hello", version=1, mode="loopback", bandwidth=3.0),  # not offered by the model
        ):
            async with raw(srv.url, hello=None) as r:
                await r.send(bad)
                await expect_fatal(r, "bad_field", 1002)


async def test_frame_over_size_limit() -> None:
    async with server_with_good_session(max_message_bytes=64 * 1024) as srv, raw(srv.url) as r:
        await r.send(audio(0, np.zeros(20000, "<f4")))  # 80 kB
        assert await r.closed() == 1009


async def test_message_flood_is_limited_then_closed() -> None:
    async with server_with_good_session(
        max_messages_per_second=50, message_burst=20, flood_close_after=30
    ) as srv:
        async with raw(srv.url) as r:
            for _ in range(60):
                await r.send(frame(type="stats"))
            codes = []
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                while True:
                    msg = await r.recv()
                    if msg["type"] == "error":
                        codes.append((msg["code"], msg["fatal"]))
            assert ("rate_limited", False) in codes and codes[-1] == ("rate_limited", True)
            assert r.ws.close_code == 1008


async def test_idle_session_times_out() -> None:
    async with server_with_good_session(idle_timeout_s=0.3) as srv, raw(srv.url) as r:
        await expect_fatal(r, "idle_timeout", 4000)


async def test_no_hello_times_out() -> None:
    async with server_with_good_session(handshake_timeout_s=0.3) as srv, raw(srv.url, hello=None) as r:
        await expect_fatal(r, "idle_timeout", 4000)


async def test_server_full() -> None:
    async with server_with_good_session(max_sessions=2) as srv:
        async with raw(srv.url):
            with pytest.raises(ServerError) as info:
                await Client.connect(srv.url)
            assert info.value.code == "server_full" and info.value.close_code == 1013


async def test_engine_failure_fails_only_its_batch() -> None:
    # the good session runs preset "balanced"; the victim runs "low" (another engine instance)
    model = FakeModel()
    async with server_with_good_session() as srv:
        srv.model = model
        async with raw(srv.url, hello=frame(type="hello", version=1, mode="loopback", latency="low")) as r:
            enc = next(e for e in srv.worker._engines.enc.values() if e.lookahead_frames == 0)
            enc.fail_next = True
            await r.send(audio(0, np.zeros(640, "<f4")))
            await expect_fatal(r, "internal", 1011)
        # the same engine keeps serving new sessions
        c = await Client.connect(srv.url, latency="low")
        res = await stream(c, np.zeros(3200, np.float32))
        assert res.done["samples_out"] == 3200
        await c.close()


# ------------------------------------------------------------------------------ non-fatal: the session goes on
async def test_unknown_type() -> None:
    async with server_with_good_session() as srv, raw(srv.url) as r:
        await r.send(frame(type="dance"))
        await expect_error(r, "unknown_type")
        await still_works(r)


async def test_missing_and_wrong_typed_fields() -> None:
    async with server_with_good_session() as srv, raw(srv.url) as r:
        await r.send(frame(type="audio", pcm=pack_array(np.zeros(3, "<f4"))))  # seq missing
        await expect_error(r, "bad_field")
        await r.send(frame(type="audio", seq="0", pcm=pack_array(np.zeros(3, "<f4"))))
        await expect_error(r, "bad_field")
        await r.send(frame(type="audio", seq=0, pcm=[0.0, 0.1]))
        await expect_error(r, "bad_field")
        await r.send(frame(type="audio", seq=0, pcm=pack_array(np.zeros(3, "<f4")), volume=11))  # unknown
        await expect_error(r, "bad_field")
        await r.send(frame(type="ack"))  # needs sample and/or frame
        await expect_error(r, "bad_field")
        await r.send(frame(type="ack", sample=-1))
        await expect_error(r, "bad_field")
        await still_works(r)


async def test_hello_twice() -> None:
    async with server_with_good_session() as srv, raw(srv.url) as r:
        await r.send(HELLO)
        await expect_error(r, "bad_state")
        await still_works(r)


async def test_pcm_byte_length_not_a_multiple() -> None:
    async with server_with_good_session() as srv, raw(srv.url) as r:
        await r.send(audio(0, {"dtype": "<f4", "shape": [3], "data": b"\0" * 11}))
        msg = await expect_error(r, "bad_audio")
        assert "multiple" in msg["message"]
        await still_works(r)


async def test_pcm_format_mismatch() -> None:
    async with server_with_good_session() as srv, raw(srv.url) as r:
        await r.send(audio(0, np.zeros(10, "<i2")))  # the session said f32
        await expect_error(r, "bad_audio")
        await still_works(r)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
async def test_nan_inf_samples(bad: float) -> None:
    async with server_with_good_session() as srv, raw(srv.url) as r:
        await r.send(audio(0, np.array([0.0, bad, 0.1], "<f4")))
        await expect_error(r, "bad_audio")
        await still_works(r)


async def test_codes_outside_codebook_or_wrong_n_q() -> None:
    async with server_with_good_session() as srv:
        async with raw(srv.url, hello=frame(type="hello", version=1, mode="decode", bandwidth=1.0)) as r:
            await r.send(frame(type="codes", frame=0, codes=pack_array(np.full((2, 3), 1024, "<u2"))))
            await expect_error(r, "bad_codes")
            await r.send(frame(type="codes", frame=0, codes=pack_array(np.zeros((4, 3), "<u2"))))
            msg = await expect_error(r, "bad_codes")
            assert "n_q" in msg["message"]
            await r.send(frame(type="codes", frame=0, codes=pack_array(np.full((2, 3), 1023, "<u2"))))
            await r.send(frame(type="flush"))
            done = await r.until("done")
            assert done["frames_in"] == 3 and done["samples_out"] == 960


async def test_sequence_gap_and_repeat() -> None:
    async with server_with_good_session() as srv, raw(srv.url) as r:
        await r.send(audio(0, np.zeros(320, "<f4")))
        await r.send(audio(0, np.zeros(320, "<f4")))  # repeat
        msg = await expect_error(r, "bad_seq")
        assert "1 expected" in msg["message"]
        await r.send(audio(5, np.zeros(320, "<f4")))  # gap
        await expect_error(r, "bad_seq")
        await r.send(audio(1, np.zeros(480, "<f4")))
        await r.send(frame(type="flush"))
        done = await r.until("done")
        assert done["samples_in"] == done["samples_out"] == 800


async def test_chunk_too_large() -> None:
    async with server_with_good_session(max_chunk_ms=100) as srv, raw(srv.url) as r:
        await r.send(audio(0, np.zeros(1601, "<f4")))
        await expect_error(r, "too_large")
        await still_works(r)


async def test_backlog_over_limit_is_rate_limited() -> None:
    async with server_with_good_session(max_backlog_ms=100, max_chunk_ms=1000) as srv, raw(srv.url) as r:
        await r.send(audio(0, np.zeros(1700, "<f4")))  # 106 ms at once
        msg = await expect_error(r, "rate_limited")
        assert "resend seq 0" in msg["message"]
        await still_works(r)


async def test_wrong_message_for_mode_and_after_done() -> None:
    async with server_with_good_session() as srv:
        async with raw(srv.url) as r:
            await r.send(frame(type="codes", frame=0, codes=pack_array(np.zeros((4, 1), "<u2"))))
            await expect_error(r, "bad_state")
            await still_works(r)
            await r.send(audio(1, np.zeros(320, "<f4")))  # after done
            await expect_error(r, "bad_state")
        async with raw(srv.url, hello=frame(type="hello", version=1, mode="decode")) as r:
            await r.send(audio(0, np.zeros(320, "<f4")))
            await expect_error(r, "bad_state")


# ------------------------------------------------------------------------------ slow reader
async def test_slow_reader_drops_oldest_audio_never_control() -> None:
    """A client that stops reading: its oldest audio is dropped (counted, visible as index gaps); its
    control messages (acks, done) all arrive; the concurrent good session is unaffected."""
    async with server_with_good_session(
        max_output_queue_ms=300, max_backlog_ms=60000, max_chunk_ms=2000, send_buffer_bytes=16384
    ) as srv:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: backpressure comes soon
        sock.connect(("127.0.0.1", srv.port))
        hello = frame(type="hello", version=1, mode="loopback", sample_rate=48000, format="f32")
        async with raw(srv.url, hello=hello, sock=sock, max_queue=1) as r:
            chunk = np.zeros(4800, "<f4")  # 100 ms at 48 kHz
            n = 150  # 15 s of audio, ~2.9 MB of output
            for seq in range(n):
                await r.send(audio(seq, chunk))
            await r.send(frame(type="flush"))
            await asyncio.sleep(1.0)  # not reading while the server produces
            pieces, done = [], None
            while done is None:
                msg = await r.recv(timeout=20)
                if msg["type"] == "audio":
                    pieces.append((msg["sample"], msg["pcm"]["shape"][0], msg["dropped"]))
                elif msg["type"] == "done":
                    done = msg
        assert done["samples_in"] == done["samples_out"] == n * 4800
        assert done["dropped"] > 0 and pieces[-1][2] == done["dropped"]
        received = sum(p[1] for p in pieces)
        assert received < n * 4800
        # indexes show where the gaps are: samples missing == samples not received
        starts = [p[0] for p in pieces]
        assert starts == sorted(starts) and any(
            b[0] > a[0] + a[1] for a, b in zip(pieces, pieces[1:], strict=False)
        )


async def test_client_that_never_reads_is_closed_too_slow() -> None:
    """Control messages are never dropped: a client that keeps asking (stats) but never reads piles them
    up; past max_control_queue it is closed with too_slow / 1008. The good session is not slowed."""
    async with server_with_good_session(max_control_queue=20, send_buffer_bytes=4096) as srv:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        async with raw(srv.url, sock=sock, max_queue=1) as r:
            for _ in range(900):
                await r.send(frame(type="stats"))
            session = max(srv.sessions.values(), key=lambda s: s.sid)
            while session.close_code is None:
                await asyncio.sleep(0.05)
            assert session.close_reason == "too_slow"
            kinds = []
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                while True:
                    msg = await r.recv()
                    kinds.append(msg.get("code", msg["type"]))
            assert kinds[-1] == "too_slow" and kinds.count("stats") >= 20
            assert r.ws.close_code == 1008


async def test_idle_timeout_waits_while_the_server_is_busy() -> None:
    """A client waiting for a slow server is not idle: no timeout while its input or flush is pending."""
    model = FakeModel()
    async with running_server(model, idle_timeout_s=0.3) as srv, raw(srv.url) as r:
        enc = next(iter(srv.worker._engines.enc.values()))
        slow_step = enc.step_slots

        def slow(inputs):
            import time

            time.sleep(0.8)
            return slow_step(inputs)

        enc.step_slots = slow
        await r.send(audio(0, np.zeros(3200, "<f4")))
        await r.send(frame(type="flush"))
        done = await r.until("done", timeout=10)
        assert done["samples_out"] == 3200
        await expect_fatal(r, "idle_timeout", 4000)  # once nothing is owed, idle is idle
