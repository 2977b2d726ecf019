"""The daemon on a real localhost socket, with the fake codec: modes, rooms, rates, concurrency, HTTP."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import numpy as np
import pytest
from fakes import FRAME, FakeModel, local_run
from serving_helpers import running_server, speech

from xcodec_stream.clients.client import Client, ServerError, listen, stream
from xcodec_stream.streaming.resample import resample


def chunked(x: np.ndarray, n: int) -> list[np.ndarray]:
    return [x[i : i + n] for i in range(0, x.size, n)]


@pytest.mark.parametrize("chunk", [160, 320, 1000, 4801])
async def test_loopback_equals_local_engine(fake_model, chunk: int) -> None:
    x = speech()
    async with running_server(fake_model) as srv:
        client = await Client.connect(srv.url, mode="loopback", want=["audio", "codes"])
        r = await stream(client, x, chunks=[c.size for c in chunked(x, chunk)])
        await client.close()
    codes, audio = local_run(FakeModel(), chunked(x, chunk))
    assert r.done["samples_in"] == r.done["samples_out"] == x.size
    assert r.done["frames_out"] == -(-x.size // FRAME) == codes.shape[1]
    np.testing.assert_array_equal(r.codes, codes)
    np.testing.assert_array_equal(r.audio, audio)
    assert not r.errors


async def test_encode_and_decode_modes(fake_model) -> None:
    x = speech()
    async with running_server(fake_model) as srv:
        enc = await Client.connect(srv.url, mode="encode", bandwidth=1.0)
        assert enc.ready["n_q"] == 2 and enc.ready["want"] == ["codes"]
        r = await stream(enc, x, chunk_ms=40)
        await enc.close()
        codes, _ = local_run(FakeModel(), chunked(x, 640), bandwidth=1.0, decode=False)
        np.testing.assert_array_equal(r.codes, codes)
        assert "audio" not in r.messages

        dec = await Client.connect(srv.url, mode="decode", bandwidth=1.0)
        d = await stream(dec, codes=codes, chunk_ms=60)
        await dec.close()
    from fakes import FakeDecoder

    ref = FakeDecoder(1)
    want = np.concatenate([ref.step_slots({0: codes})[0], ref.flush_slots([0])[0]])
    assert d.done["frames_in"] == codes.shape[1] and d.done["samples_out"] == codes.shape[1] * FRAME
    np.testing.assert_array_equal(d.audio, want)


async def test_48k_client_gets_48k_back(fake_model) -> None:
    x16 = speech()
    x48 = resample(x16, 16000, 48000)
    async with running_server(fake_model) as srv:
        client = await Client.connect(srv.url, mode="loopback", sample_rate=48000, format="s16")
        assert client.ready["sample_rate"] == 48000 and client.ready["codec_sample_rate"] == 16000
        r = await stream(client, x48, chunk_ms=20)
        await client.close()
    assert r.audio.size == x48.size == r.done["samples_out"] == r.done["samples_in"]
    # what the server heard and sent back: the same pipeline run locally
    x16_srv = resample(np.round(x48 * 32768).clip(-32768, 32767) / 32768, 48000, 16000)
    _, audio16 = local_run(FakeModel(), [x16_srv])
    want = resample(audio16, 16000, 48000)[: x48.size]
    np.testing.assert_allclose(r.audio, want, atol=2 / 32768 + 1e-6)


@pytest.mark.parametrize("batch_wait_ms", [0.0, 5.0])
async def test_eight_concurrent_clients_different_rates_and_chunks(fake_model, batch_wait_ms: float) -> None:
    x16 = speech(seconds=1.5)
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

    async def one(rate: int, chunk_ms: int) -> tuple[int, dict, np.ndarray, np.ndarray]:
        x = resample(x16, 16000, rate) if rate != 16000 else x16
        c = await Client.connect(srv.url, mode="loopback", sample_rate=rate, want=["audio", "codes"])
        r = await stream(c, x, chunk_ms=chunk_ms)
        await c.close()
        return x.size, r.done, r.audio, r.codes

    async with running_server(fake_model, batch_wait_ms=batch_wait_ms) as srv:
        results = await asyncio.gather(*(one(rate, ms) for rate, ms in setups))
    for (rate, _), (n, done, audio, codes) in zip(setups, results, strict=True):
        assert done["samples_in"] == done["samples_out"] == audio.size == n, rate
        n16 = -(-n * 16000 // rate)
        assert codes.shape[1] == done["frames_out"] == -(-n16 // FRAME), rate
        assert done["dropped"] == 0
        if rate == 16000:
            np.testing.assert_array_equal(codes, local_run(FakeModel(), [x16], decode=False)[0])


async def test_publish_three_listeners_and_late_joiner(fake_model) -> None:
    x = speech(seconds=2.0)
    # The publisher sends its 2 s as fast as it can, not in real time. When the event loop is starved (CPU
    # load), several worker ticks are dispatched before a listener's writer runs, and a queue holding codes
    # and audio of the same 2 s counts 4 s: over the default max_output_queue_ms (2 s), so the slow-reader
    # policy drops the oldest messages. That policy is tested elsewhere; here the bound is out of the way and
    # nothing may be dropped.
    async with running_server(fake_model, max_output_queue_ms=60_000.0) as srv:
        pub = await Client.connect(srv.url, mode="publish", room="talk", want=["codes"])
        listeners = [
            await Client.connect(srv.url, mode="listen", room="talk", want=["codes"]),
            await Client.connect(srv.url, mode="listen", room="talk", want=["codes", "audio"]),
            await Client.connect(
                srv.url, mode="listen", room="talk", sample_rate=48000, want=["audio", "codes"]
            ),
        ]
        tasks = [asyncio.create_task(listen(c)) for c in listeners]
        first_half = x[: x.size // 2]
        late_msgs: list[dict] = []
        late_task = None
        mid_health: list[dict] = []

        async def publish() -> None:
            nonlocal late_task
            pos = 0
            for i, n in enumerate([320] * (first_half.size // 320)):
                await pub.send_audio(x[pos : pos + n])
                pos += n
                if i == 25:
                    await asyncio.sleep(0.2)  # let frames flow, then a listener joins mid-stream
                    late = await Client.connect(srv.url, mode="listen", room="talk", want=["codes"])
                    late_task = asyncio.create_task(listen(late, on_message=late_msgs.append))
                    mid_health.append(srv.health())
            for chunk in chunked(x[pos:], 320):
                await pub.send_audio(chunk)
            await pub.flush()

        sender = asyncio.create_task(publish())
        own = []
        while True:
            msg = await pub.recv()
            if msg["type"] == "codes":
                own.append(msg["codes"])
            if msg["type"] == "done":
                break
        await sender
        results = await asyncio.gather(*tasks)
        late_result = await late_task
        health = srv.health()
    codes, audio16 = local_run(FakeModel(), chunked(x, 320))
    np.testing.assert_array_equal(np.concatenate(own, axis=1), codes)
    for r in [*results, late_result]:
        assert r.done["dropped"] == 0 and r.done["reason"] == "publisher_done"
    for r in results:
        np.testing.assert_array_equal(r.codes, codes)
        assert r.room["n_q"] == 4 and r.room["frame"] == 0 and r.room["bandwidth"] == 2.0
    # the two audio listeners: decoded once in the room, resampled per listener; lengths exact
    assert results[1].audio.size == x.size
    np.testing.assert_array_equal(results[1].audio, audio16)
    assert results[2].audio.size == 3 * x.size
    # late joiner: `room` first (after ready), then codes from the frame it announced, equal to the room's
    kinds = [m["type"] for m in late_msgs]
    assert kinds[0] == "room" and kinds.index("codes") > 0
    start = late_msgs[0]["frame"]
    assert 0 < start < codes.shape[1]
    assert late_msgs[kinds.index("codes")]["frame"] == start
    np.testing.assert_array_equal(late_result.codes, codes[:, start:])
    assert mid_health[0]["rooms"] == {"talk": 4} and health["rooms"] == {}


async def test_room_errors(fake_model) -> None:
    async with running_server(fake_model) as srv:
        with pytest.raises(ServerError) as info:
            await Client.connect(srv.url, mode="listen", room="nobody")
        assert info.value.code == "room_not_found" and info.value.close_code == 4004
        pub = await Client.connect(srv.url, mode="publish", room="r")
        with pytest.raises(ServerError) as info:
            await Client.connect(srv.url, mode="publish", room="r")
        assert info.value.code == "room_busy" and info.value.close_code == 4009
        lst = await Client.connect(srv.url, mode="listen", room="r")
        await pub.close()  # publisher vanishes: the listener gets done + 4010
        r = await listen(lst)
        assert r.done["reason"] == "publisher_left"
        await asyncio.sleep(0.05)
        assert lst.ws.close_code == 4010


async def test_healthz_and_404(fake_model) -> None:
    async with running_server(fake_model) as srv:
        url = f"http://127.0.0.1:{srv.port}"

        def get(path: str) -> tuple[int, dict]:
            try:
                with urllib.request.urlopen(url + path, timeout=5) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, body = await asyncio.to_thread(get, "/healthz")
        assert status == 200 and body["status"] == "ok" and body["model"] == "test-model"
        assert body["sessions"] == 0 and body["max_sessions"] == 12 and body["protocol_version"] == 1
        status, body = await asyncio.to_thread(get, "/nothing-here")
        assert status == 404 and body["error"] == "not_found"


async def test_stats_on_request_and_periodic(fake_model) -> None:
    async with running_server(fake_model) as srv:
        c = await Client.connect(srv.url, mode="encode", stats_interval_ms=100)
        await c.send_audio(np.zeros(1600, np.float32))
        await c.request_stats()
        seen = []
        while len([m for m in seen if m["type"] == "stats"]) < 2:
            seen.append(await c.recv())
        stats = [m for m in seen if m["type"] == "stats"]
        assert {"lag_ms", "output_queue", "dropped", "received", "consumed"} <= set(stats[0])
        assert stats[-1]["received"] == 1600
        await c.close()


async def test_server_close_tells_every_session(fake_model) -> None:
    async with running_server(fake_model) as srv:
        c = await Client.connect(srv.url, mode="encode")
        await srv.close()
        with pytest.raises(ServerError) as info:
            while True:
                await c.recv()
        assert info.value.code == "shutting_down"
        await asyncio.sleep(0.05)
        assert c.ws.close_code == 1001


async def test_health_reports_the_servers_own_time_per_tick(fake_model) -> None:
    """Worker ticks that stepped sessions are split into codec time and the server's own overhead: a codec
    that sleeps 30 ms per encoder step shows in the tick time but not in the overhead."""
    async with running_server(fake_model, max_chunks_per_step=1) as srv:
        assert srv.health()["worker"]["overhead_p50_ms"] == 0.0  # nothing stepped yet
        enc = next(iter(srv.worker._engines.enc.values()))
        step = enc.step_slots

        def slow(inputs):
            time.sleep(0.03)
            return step(inputs)

        enc.step_slots = slow
        c = await Client.connect(srv.url)
        await stream(c, speech(seconds=0.3), chunk_ms=100)
        await c.close()
        worker = srv.health()["worker"]
    assert worker["max_tick_ms"] >= 30.0
    assert 0.0 < worker["overhead_p50_ms"] <= worker["overhead_p99_ms"] < 30.0
