"""The daemon with the real streaming engine (random:tiny): server output == the engine driven locally."""

from __future__ import annotations

import asyncio

import numpy as np
from fakes import local_decode, local_run
from serving_helpers import running_server, speech

from xcodec_stream.clients.client import Client, listen, stream
from xcodec_stream.streaming.resample import resample

CAP = 4  # server max_sessions = slots per engine; the local reference uses the same capacity and slot 0


def chunked(x: np.ndarray, n: int) -> list[np.ndarray]:
    return [x[i : i + n] for i in range(0, x.size, n)]


async def test_loopback_bit_exact_with_local_engine(tiny_model) -> None:
    """arctic_a0009 (3.095 s, ends in a partial frame) through the server: codes and audio bit for bit."""
    x = speech()
    chunks = chunked(x, 3200)
    async with running_server(tiny_model, max_sessions=CAP, max_chunks_per_step=1) as srv:
        client = await Client.connect(srv.url, mode="loopback", want=["audio", "codes"])
        assert client.ready["lookahead_frames"] > 0 and client.ready["algorithmic_latency_ms"] > 0
        r = await stream(client, x, chunks=[c.size for c in chunks])
        await client.close()
    codes, audio = local_run(tiny_model, chunks, capacity=CAP, slot=0)
    assert r.done["samples_in"] == r.done["samples_out"] == x.size == r.audio.size
    assert r.done["frames_out"] == codes.shape[1] == -(-x.size // 320)
    np.testing.assert_array_equal(r.codes, codes)
    np.testing.assert_array_equal(r.audio, audio)


async def test_encode_codes_equal_local_streaming_codes(tiny_model) -> None:
    # default batching: the server may merge pending chunks into one step; codes do not depend on chunking
    x = speech()
    async with running_server(tiny_model, max_sessions=CAP) as srv:
        client = await Client.connect(srv.url, mode="encode", bandwidth=2.0)
        r = await stream(client, x, chunk_ms=40)
        await client.close()
    codes, _ = local_run(tiny_model, chunked(x, 8000), bandwidth=2.0, decode=False, capacity=CAP)
    assert r.codes.shape == (4, -(-x.size // 320)) == codes.shape
    np.testing.assert_array_equal(r.codes, codes)


async def test_decode_only(tiny_model) -> None:
    x = speech(seconds=1.0)
    codes, _ = local_run(tiny_model, [x], decode=False, capacity=CAP)
    code_chunks = [codes[:, i : i + 10] for i in range(0, codes.shape[1], 10)]
    async with running_server(tiny_model, max_sessions=CAP, max_chunks_per_step=1) as srv:
        client = await Client.connect(srv.url, mode="decode")
        assert client.ready["n_q"] == codes.shape[0]
        r = await stream(client, codes=codes, chunks=[c.shape[1] for c in code_chunks])
        await client.close()
    want = local_decode(tiny_model, code_chunks, capacity=CAP)
    assert r.done["frames_in"] == codes.shape[1] and r.audio.size == codes.shape[1] * 320
    np.testing.assert_array_equal(r.audio, want)


async def test_publish_three_listeners_identical_codes(tiny_model) -> None:
    x = speech(seconds=1.0)
    async with running_server(tiny_model, max_sessions=6) as srv:
        pub = await Client.connect(srv.url, mode="publish", room="live")
        listeners = [
            await Client.connect(srv.url, mode="listen", room="live", want=["codes"]),
            await Client.connect(srv.url, mode="listen", room="live", want=["codes", "audio"]),
            await Client.connect(
                srv.url, mode="listen", room="live", want=["codes", "audio"], sample_rate=44100
            ),
        ]
        tasks = [asyncio.create_task(listen(c)) for c in listeners]
        done = await stream(pub, x, chunk_ms=40)
        results = await asyncio.gather(*tasks)
    codes, audio = local_run(tiny_model, [x], capacity=6)  # codes do not depend on chunking
    assert done.done["frames_out"] == codes.shape[1]
    for r in results:
        assert r.room["n_q"] == codes.shape[0] and r.room["frame"] == 0
        np.testing.assert_array_equal(r.codes, codes)
    # the room decodes once; listeners get it at their own rate, exact lengths
    assert results[1].audio.size == x.size
    np.testing.assert_allclose(results[1].audio, audio, atol=1e-5)
    assert results[2].audio.size == -(-x.size * 44100 // 16000)


async def test_eight_concurrent_clients(tiny_model) -> None:
    x16 = speech("arctic_a0007.wav", seconds=0.8)
    setups = [
        (16000, 20),
        (48000, 10),
        (44100, 30),
        (8000, 20),
        (22050, 25),
        (32000, 60),
        (24000, 15),
        (16000, 100),
    ]

    async def one(rate: int, chunk_ms: int):
        x = resample(x16, 16000, rate)
        c = await Client.connect(srv.url, mode="loopback", sample_rate=rate, want=["audio", "codes"])
        r = await stream(c, x, chunk_ms=chunk_ms)
        await c.close()
        return x.size, r

    async with running_server(tiny_model, max_sessions=8) as srv:
        results = await asyncio.gather(*(one(rate, ms) for rate, ms in setups))
    codes16, audio16 = local_run(tiny_model, [x16], capacity=8)
    for (rate, _), (n, r) in zip(setups, results, strict=True):
        assert r.done["samples_in"] == r.done["samples_out"] == r.audio.size == n, rate
        n16 = -(-n * 16000 // rate)
        assert r.codes.shape[1] == r.done["frames_out"] == -(-n16 // 320), rate
        assert r.done["dropped"] == 0 and not r.errors
        assert np.isfinite(r.audio).all() and np.abs(r.audio).max() > 0
        if rate == 16000:  # batched with 7 others, any chunking: same codes, audio within float noise
            np.testing.assert_array_equal(r.codes, codes16)
            np.testing.assert_allclose(r.audio, audio16, atol=1e-5)


async def test_48k_client(tiny_model) -> None:
    x16 = speech(seconds=1.0)
    x48 = resample(x16, 16000, 48000)
    async with running_server(tiny_model, max_sessions=CAP) as srv:
        client = await Client.connect(srv.url, mode="loopback", sample_rate=48000)
        r = await stream(client, x48, chunk_ms=20)
        await client.close()
    assert r.ready["sample_rate"] == 48000
    assert r.audio.size == x48.size == r.done["samples_out"]
    _, audio16 = local_run(tiny_model, [resample(x48, 48000, 16000)], capacity=CAP)
    np.testing.assert_allclose(r.audio, resample(audio16, 16000, 48000)[: x48.size], atol=1e-5)
