"""Rooms that span daemons (`[cluster] redis`): three in-process daemons (random:tiny) sharing a real
redis-server started on a free port. Codes cross daemons; audio is decoded once per daemon and equals what a
listener on the publisher's daemon gets; room_not_found / room_busy hold cluster-wide; a full daemon names
one with free slots; Redis stopped and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time

import numpy as np
import pytest
from cluster_helpers import RedisServer
from serving_helpers import running_server, speech

from xcodec_stream.clients.client import Client, ServerError, listen, stream


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


async def until(check, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def cluster(model, redis_url: str, n: int = 3, **overrides):
    """n daemons n0..n{n-1} in this process, in one cluster (a key prefix of their own)."""
    prefix = f"t{secrets.token_hex(4)}:"
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for i in range(n):
            options = {"max_sessions": 8, "cluster_ttl_s": 1.5, **overrides}
            if isinstance(options["max_sessions"], list | tuple):
                options["max_sessions"] = options["max_sessions"][i]
            srv = await stack.enter_async_context(
                running_server(
                    model, cluster_redis=redis_url, cluster_node=f"n{i}", cluster_prefix=prefix, **options
                )
            )
            servers.append(srv)
        await until(lambda: all(len(s.cluster.nodes) == n for s in servers), what="every daemon seen")
        yield servers


async def test_room_spans_daemons_same_codes_and_audio(tiny_model, redis_server) -> None:
    x = speech(seconds=1.2)
    async with cluster(tiny_model, redis_server.url) as (a, b, c):
        pub = await Client.connect(a.url, mode="publish", room="live", want=["codes"])
        assert pub.ready["node"] == "n0"
        on_a = await Client.connect(a.url, mode="listen", room="live", want=["codes", "audio"])
        on_b = [
            await Client.connect(b.url, mode="listen", room="live", want=["codes", "audio"]) for _ in "12"
        ]
        on_b48 = await Client.connect(b.url, mode="listen", room="live", want=["audio"], sample_rate=48000)
        on_c = await Client.connect(c.url, mode="listen", room="live", want=["codes"])
        listeners = [on_a, *on_b, on_b48, on_c]
        # every daemon decodes the room once: one follower (one relay decoder) on b for its three listeners
        assert set(b.rooms.mirrors) == {"live"} and len(b.rooms.mirrors["live"].room.listeners) == 3
        assert set(c.rooms.mirrors) == {"live"} and not a.rooms.mirrors
        tasks = [asyncio.create_task(listen(cl)) for cl in listeners]
        await until(lambda: a.cluster.view()["rooms"].get("live", {}).get("listeners") == {"n0": 1, "n1": 3, "n2": 1}, what="listener counts in the cluster view")  # fmt: skip
        view = a.health()["cluster"]
        assert view["rooms"]["live"]["host"] == "n0" and set(view["nodes"]) == {"n0", "n1", "n2"}
        published = await stream(pub, x, chunk_ms=40)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    codes = published.codes
    assert codes.shape[1] == -(-x.size // 320)
    for r in results:
        assert r.room["frame"] == 0 and r.room["n_q"] == codes.shape[0]
        assert r.done["reason"] == "publisher_done" and r.done["dropped"] == 0
    for r in (results[0], results[1], results[2], results[4]):
        np.testing.assert_array_equal(r.codes, codes)  # the same code frames on every daemon
    # audio decoded on b equals the audio decoded on a (same engine, same codes, same start)
    assert results[0].audio.size == x.size
    np.testing.assert_allclose(results[1].audio, results[0].audio, atol=1e-6)
    np.testing.assert_array_equal(results[1].audio, results[2].audio)
    assert results[3].audio.size == x.size * 3  # b's 48 kHz listener: resampled there, exact length


async def test_room_not_found_and_busy_hold_cluster_wide(tiny_model, redis_server) -> None:
    async with cluster(tiny_model, redis_server.url, n=2) as (a, b):
        with pytest.raises(ServerError) as info:
            await Client.connect(b.url, mode="listen", room="nowhere")
        assert info.value.code == "room_not_found" and info.value.close_code == 4004
        pub = await Client.connect(a.url, mode="publish", room="talk")
        for url in (a.url, b.url):
            with pytest.raises(ServerError) as info:
                await Client.connect(url, mode="publish", room="talk")
            assert info.value.code == "room_busy" and info.value.close_code == 4009
        assert "n0" in info.value.message  # says where the room is
        # the publisher leaves (normal close): the name is free cluster-wide, listeners elsewhere get done
        listener = await Client.connect(b.url, mode="listen", room="talk", want=["codes"])
        task = asyncio.create_task(listen(listener))
        await pub.send_audio(speech(seconds=0.3))
        await pub.close()
        r = await asyncio.wait_for(task, 10)
        assert r.done["reason"] == "publisher_left"
        await until(lambda: "talk" not in a.rooms.summary(), what="room gone")
        again = await Client.connect(b.url, mode="publish", room="talk")  # now hosted on b
        assert again.ready["node"] == "n1"
        await again.close()


async def test_full_daemon_names_one_with_free_slots(tiny_model, redis_server) -> None:
    async with cluster(tiny_model, redis_server.url, n=3, max_sessions=[1, 4, 2]) as (a, b, c):
        first = await Client.connect(a.url, mode="encode")
        for srv in (a, b, c):  # each daemon's view, as of its last heartbeat
            await until(lambda srv=srv: srv.cluster.nodes["n0"]["free"] == 0, what="a full in every view")
        with pytest.raises(ServerError) as info:
            await Client.connect(a.url, mode="encode")
        assert info.value.code == "server_full" and info.value.close_code == 1013
        assert "n1" in info.value.message and b.url in info.value.message  # the most free slots
        view = c.health()["cluster"]
        assert view["nodes"]["n0"]["free"] == 0 and view["nodes"]["n1"]["free"] == 4
        assert view["free"] == 0 + 4 + 2
        await first.close()


async def test_redis_stopped_then_restarted(tiny_model, redis_server) -> None:
    """Redis goes away: local sessions go on; listeners of a room hosted elsewhere get cluster_unavailable;
    new cross-daemon joins and publishes get it too. Redis comes back (empty): the daemons re-register and
    re-claim their rooms by themselves, and the room can be joined from the other daemon again."""
    x = speech("arctic_a0007.wav", seconds=3.5)
    async with cluster(tiny_model, redis_server.url, n=2) as (a, b):
        pub = await Client.connect(a.url, mode="publish", room="r", want=["codes"])
        local = await Client.connect(a.url, mode="listen", room="r", want=["codes"])
        remote = await Client.connect(b.url, mode="listen", room="r", want=["codes"])
        loop_b = await Client.connect(b.url, mode="loopback")
        pub_task = asyncio.create_task(stream(pub, x, chunk_ms=20, realtime=True))
        local_task = asyncio.create_task(listen(local))
        remote_task = asyncio.create_task(listen(remote))
        loop_task = asyncio.create_task(stream(loop_b, x, chunk_ms=20, realtime=True))
        await asyncio.sleep(0.5)
        redis_server.stop()
        with pytest.raises(ServerError) as info:
            await asyncio.wait_for(remote_task, 10)
        assert info.value.code == "cluster_unavailable" and "Redis is unreachable" in info.value.message
        with pytest.raises(ServerError) as info:
            await Client.connect(b.url, mode="listen", room="r")
        assert info.value.code == "cluster_unavailable"
        with pytest.raises(ServerError) as info:
            await Client.connect(b.url, mode="publish", room="other")
        assert info.value.code == "cluster_unavailable"
        await until(lambda: not a.cluster.connected and not b.cluster.connected, what="both see Redis down")
        assert "ConnectionError" in a.health()["cluster"]["error"]
        # back, empty: the daemons re-register and a re-claims its room from its heartbeat
        redis_server.start()
        await until(lambda: a.cluster.connected and b.cluster.connected, what="re-registered")
        await until(lambda: set(b.cluster.nodes) == {"n0", "n1"}, what="b sees a again")
        rejoined = await Client.connect(b.url, mode="listen", room="r", want=["codes"])
        assert pub_task.done() is False, "the clip is too short for this test"
        rejoined_task = asyncio.create_task(listen(rejoined))
        # local sessions went on throughout: complete and exact
        looped = await asyncio.wait_for(loop_task, 20)
        assert looped.done["samples_out"] == looped.done["samples_in"] == x.size and not looped.errors
        published = await asyncio.wait_for(pub_task, 20)
        heard = await asyncio.wait_for(local_task, 20)
        np.testing.assert_array_equal(heard.codes, published.codes)
        assert heard.done["reason"] == "publisher_done"
        # the listener that joined after the restart: the live edge on, the publisher's codes
        late = await asyncio.wait_for(rejoined_task, 20)
        first = late.room["frame"]
        assert 0 < first < published.codes.shape[1] and late.done["reason"] == "publisher_done"
        np.testing.assert_array_equal(late.codes, published.codes[:, first:])
