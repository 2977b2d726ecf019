"""The cluster behind a real nginx (configs/cluster/'s configuration, rendered for free ports), and faults on
real daemon processes: resume through the balancer, a full daemon skipped, kill -9 of a listener's daemon
and of the publisher's daemon, SIGTERM drain. redis-server and nginx are started by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time

import numpy as np
import pytest
from cluster_helpers import CLI, Daemon, Nginx, RedisServer, healthz
from serving_helpers import running_server, speech
from test_cluster_rooms import until

from xcodec_stream.clients.client import Client, ServerError, listen, stream
from xcodec_stream.serving.cluster.nginx import example


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@contextlib.contextmanager
def nginx_for(tmp_path, daemons: dict[str, int]):
    proxy = Nginx(tmp_path, daemons).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def test_shipped_nginx_conf_is_the_rendered_example() -> None:
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "configs" / "cluster" / "nginx.conf"
    assert shipped.read_text() == example(), "regenerate: python -m xcodec_stream.serving.cluster.nginx"


async def test_resume_and_admission_through_nginx(tiny_model, redis_server, tmp_path) -> None:
    """Sessions resumed through nginx reach the daemon holding them (`?node=`); a full daemon is skipped by
    nginx (503, next upstream) instead of refusing the client; /healthz through nginx has the cluster view."""
    x = speech(seconds=1.5)
    prefix = f"t{secrets.token_hex(4)}:"
    common = {"cluster_redis": redis_server.url, "cluster_prefix": prefix, "cluster_ttl_s": 1.5}
    async with (
        running_server(tiny_model, max_sessions=2, cluster_node="n0", **common) as a,
        running_server(tiny_model, max_sessions=4, cluster_node="n1", **common) as b,
    ):
        with nginx_for(tmp_path, {"n0": a.port, "n1": b.port}) as proxy:
            view = (await asyncio.to_thread(healthz, f"http://127.0.0.1:{proxy.port}"))["cluster"]
            assert view["node"] in ("n0", "n1")
            await until(lambda: len(a.cluster.nodes) == 2)
            # 6 sessions = both daemons' capacity: nginx places every one (a full daemon answers 503)
            clients = [await Client.connect(proxy.url, mode="loopback", resume=True) for _ in range(6)]
            assert sorted(c.ready["node"] for c in clients) == ["n0"] * 2 + ["n1"] * 4
            # the 7th, once every daemon knows that every daemon is full: server_full from the daemon itself
            await until(lambda: a.cluster.hint() is None and b.cluster.hint() is None, what="views: all full")
            with pytest.raises(ServerError) as info:
                await Client.connect(proxy.url, mode="loopback")
            assert info.value.code == "server_full" and info.value.close_code == 1013

            async def drop_twice(c: Client) -> None:
                for seq in (20, 45):
                    while c.seq < seq:
                        await asyncio.sleep(0.01)
                    c.ws.transport.abort()  # no close frame: the client resumes through nginx

            drops = [asyncio.create_task(drop_twice(c)) for c in clients]
            results = await asyncio.gather(*(stream(c, x, chunk_ms=20, realtime=True) for c in clients))
            await asyncio.gather(*drops)
            for c, r in zip(clients, results, strict=True):
                assert c.resumes == 2 and not r.errors
                assert r.done["samples_in"] == r.done["samples_out"] == x.size == r.audio.size
                await c.close()


def start_daemons(tmp_path, redis_url: str, nodes: list[str]) -> dict[str, Daemon]:
    daemons = {
        n: Daemon(tmp_path, n, redis_url).start() for n in nodes
    }  # start together: torch loads once each
    try:
        for d in daemons.values():
            d.wait_ready()
    except BaseException:
        for d in daemons.values():
            d.stop()
        raise
    return daemons


def clip(seconds: float) -> np.ndarray:
    x = np.concatenate([speech("arctic_a0007.wav"), speech(), speech("arctic_a0007.wav")])
    return x[: int(seconds * 16000)]


@pytest.mark.skipif(not CLI.exists(), reason="the xcodec-stream console script is not installed")
async def test_kill_9_listener_daemon_then_publisher_daemon(redis_server, tmp_path) -> None:
    """d1 hosts the room (its publisher connects there directly); d2 and d3 are behind nginx. kill -9 d2: its
    listener reconnects through nginx and goes on from the live edge (a new `room` message, the publisher's
    codes from there). kill -9 d1: every listener left gets `done` / publisher_left within a bound."""
    daemons = await asyncio.to_thread(start_daemons, tmp_path, redis_server.url, ["d1", "d2", "d3"])
    d1, d2, d3 = daemons.values()
    try:
        with nginx_for(tmp_path, {"d2": d2.port, "d3": d3.port}) as proxy:
            pub = await Client.connect(d1.url, mode="publish", room="live", want=["codes"])
            published = {}
            pub_task = asyncio.create_task(
                stream(pub, clip(8.0), chunk_ms=20, realtime=True, on_message=lambda m: _keep(published, m))
            )
            on_d2 = await Client.connect(f"{proxy.url}/?node=d2", mode="listen", room="live", want=["codes"])
            on_d3 = await Client.connect(
                f"{proxy.url}/?node=d3", mode="listen", room="live", want=["codes", "audio"]
            )
            assert (on_d2.ready["node"], on_d3.ready["node"]) == ("d2", "d3")
            got_d2: dict[int, np.ndarray] = {}
            d2_task = asyncio.create_task(listen(on_d2, on_message=lambda m: _keep(got_d2, m)))
            d3_task = asyncio.create_task(listen(on_d3))
            await asyncio.sleep(1.5)
            d2.kill()
            with pytest.raises(ServerError) as info:
                await asyncio.wait_for(d2_task, 10)
            assert info.value.code == "closed"
            last = max(f + c.shape[1] for f, c in got_d2.items())
            again = await Client.connect(proxy.url, mode="listen", room="live", want=["codes"])
            assert again.ready["node"] == "d3"  # nginx skipped the dead daemon
            again_task = asyncio.create_task(listen(again))
            await asyncio.sleep(1.5)
            d1.kill()
            t_kill = time.monotonic()
            results = await asyncio.wait_for(asyncio.gather(again_task, d3_task), 15)
            waited = time.monotonic() - t_kill
            with contextlib.suppress(ServerError):
                await pub_task
    finally:
        for d in daemons.values():
            d.stop()
    rejoined, stayed = results
    for r in results:
        assert r.done["reason"] == "publisher_left"
    # ttl_s 1.5 (records expire) + a check every ttl_s / 3 + the worker's flush of the room
    assert waited < 1.5 + 0.5 + 2.0, f"publisher_left {waited:.1f} s after the kill"
    first = rejoined.room["frame"]
    assert first >= last, "a rejoined listener starts at the live edge, after what it had"
    codes = np.concatenate([published[f] for f in sorted(published)], axis=1)
    n = min(codes.shape[1], first + rejoined.codes.shape[1]) - first
    assert n > 25  # it heard about a second more before d1 died
    np.testing.assert_array_equal(rejoined.codes[:, :n], codes[:, first : first + n])
    assert stayed.audio.size > 16000 * 2


def _keep(into: dict, msg: dict) -> None:
    if msg["type"] == "codes":
        into[msg["frame"]] = msg["codes"]


@pytest.mark.skipif(not CLI.exists(), reason="the xcodec-stream console script is not installed")
async def test_sigterm_drains_one_daemon_rooms_elsewhere_unaffected(redis_server, tmp_path) -> None:
    daemons = await asyncio.to_thread(start_daemons, tmp_path, redis_server.url, ["p1", "l2", "l3"])
    p1, l2, l3 = daemons.values()
    try:
        x = clip(4.0)
        pub = await Client.connect(p1.url, mode="publish", room="talk", want=["codes"])
        stay = await Client.connect(l2.url, mode="listen", room="talk", want=["codes", "audio"])
        drained = await Client.connect(l3.url, mode="listen", room="talk", want=["codes"])
        loop_l3 = await Client.connect(l3.url, mode="loopback")
        tasks = [asyncio.create_task(listen(stay)), asyncio.create_task(listen(drained))]
        pub_task = asyncio.create_task(stream(pub, x, chunk_ms=20, realtime=True))
        loop_task = asyncio.create_task(stream(loop_l3, x[:32000], chunk_ms=20, realtime=True))
        await asyncio.sleep(1.0)
        l3.kill(signal.SIGTERM)
        looped = await asyncio.wait_for(loop_task, 20)
        gone = await asyncio.wait_for(tasks[1], 20)
        with pytest.raises(ServerError) as info:  # after `done`: the error, then the close
            await drained.recv()
        await asyncio.wait_for(drained.ws.wait_closed(), 10)
        rc = await asyncio.to_thread(l3.proc.wait, 30)
        published = await asyncio.wait_for(pub_task, 20)
        stayed = await asyncio.wait_for(tasks[0], 20)
    finally:
        for d in daemons.values():
            d.stop()
    assert rc == 0
    # the drained daemon's listener: `done` (shutting_down) at once, then shutting_down / 1001
    assert gone.done["reason"] == "shutting_down" and gone.codes.shape[1] > 0
    assert info.value.code == "shutting_down" and drained.ws.close_code == 1001
    # its own loopback session was flushed: everything it had accepted came back
    assert looped.done["reason"] == "shutting_down"
    assert looped.done["samples_out"] == looped.done["samples_in"] == looped.audio.size > 0
    # the room and its listener on another daemon: untouched, complete
    assert stayed.done["reason"] == "publisher_done" and not stayed.errors
    np.testing.assert_array_equal(stayed.codes, published.codes)
    assert stayed.audio.size == x.size
    text = l3.log.read_text()
    assert "stopping: no new connections" in text
