"""Cluster scale: one publisher, N listeners spread over 3 daemons sharing a Redis vs all on one daemon."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from .report import machine, markdown_table, replace_between, today

CLIP = Path(__file__).resolve().parents[2] / "tests" / "data" / "arctic_a0007.wav"
OUT = "docs/DEPLOY.md"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="random:tiny", help="model every daemon serves (default random:tiny)")
    p.add_argument("--listeners", type=int, default=60, help="listeners in the room (default 60)")
    p.add_argument("--daemons", type=int, default=3, help="daemons in the cluster (default 3)")
    p.add_argument("--seconds", type=float, default=10.0, help="audio the publisher streams in real time")
    p.add_argument("--want", default="codes", choices=("codes", "audio"), help="what listeners receive")
    p.add_argument("--out", default=OUT, help=f"markdown file to update (default {OUT}; '' = none)")
    p.set_defaults(func=run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _redis():
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


async def _net_bytes(url: str) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        info = await client.info("stats")
        return int(info["total_net_input_bytes"]) + int(info["total_net_output_bytes"])
    finally:
        await client.aclose()


async def _scenario(model, n_daemons: int, args: argparse.Namespace, redis_url: str | None) -> dict:
    import soundfile as sf

    from xcodec_stream.clients.client import Client, listen, stream
    from xcodec_stream.serving.config import load_config
    from xcodec_stream.serving.server import XcodecServer

    x, _ = sf.read(CLIP, dtype="float32")
    x = np.tile(x, int(np.ceil(args.seconds * 16000 / x.size)))[: int(args.seconds * 16000)]
    per = -(-args.listeners // n_daemons) + 2
    async with contextlib.AsyncExitStack() as stack:
        servers = []
        for i in range(n_daemons):
            options = {"port": 0, "max_sessions": per, "model": args.model, "batch_wait_ms": 5.0}
            if redis_url:
                options |= {"cluster_redis": redis_url, "cluster_node": f"b{i}", "cluster_ttl_s": 3.0}
            srv = XcodecServer(model, load_config(None, options))
            await srv.start()
            stack.push_async_callback(srv.close)
            servers.append(srv)
        pub = await Client.connect(servers[0].url, mode="publish", room="bench", want=["codes"])
        listeners = [
            await Client.connect(
                servers[i % n_daemons].url, mode="listen", room="bench", want=[args.want], name=f"l{i}"
            )
            for i in range(args.listeners)
        ]
        arrivals: list[dict[int, float]] = [{} for _ in listeners]
        own: dict[int, float] = {}

        def keep(into: dict[int, float], kind: str):
            def on(msg: dict) -> None:
                if msg["type"] == kind:  # the end of this message: frame (codes) or 16 kHz sample (audio)
                    end = (
                        msg["frame"] + msg["codes"].shape[1]
                        if kind == "codes"
                        else msg["sample"] + msg["pcm"].size
                    )
                    into[end] = time.monotonic()

            return on

        kind = "codes" if args.want == "codes" else "audio"
        tasks = [
            asyncio.create_task(listen(c, on_message=keep(a, kind)))
            for c, a in zip(listeners, arrivals, strict=True)
        ]
        idle = 0.0
        if redis_url:  # the cluster's own traffic (heartbeats, followers waiting), to tell the room's apart
            b0, i0 = await _net_bytes(redis_url), time.monotonic()
            await asyncio.sleep(2.0)
            idle = (await _net_bytes(redis_url) - b0) / (time.monotonic() - i0)
        before = await _net_bytes(redis_url) if redis_url else 0
        t0 = time.monotonic()
        await stream(pub, x, chunk_ms=20, realtime=True, on_message=keep(own, "codes"))
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t0
        redis_bytes = (await _net_bytes(redis_url) - before) if redis_url else 0

    # lag: when a listener has a frame (or sample) minus when the publisher sent the 20 ms chunk holding
    # its last sample (chunks go out at t0 + k * 20 ms)
    def sent(end: int) -> float:
        return t0 + 0.02 * ((end - 1) if kind == "codes" else (end - 1) // 320)

    def pct(which: list[dict[int, float]]) -> tuple[float, float]:
        lags = [1000 * (t - sent(end)) for a in which for end, t in a.items()]
        return float(np.percentile(lags, 50)), float(np.percentile(lags, 99))

    # listener i is on daemon i % n: the publisher's daemon is daemon 0
    others = [a for i, a in enumerate(arrivals) if i % n_daemons]
    return {
        "host": pct(arrivals[::n_daemons]),
        "elsewhere": pct(others) if others else None,
        "room_kbit_s": 8 * (redis_bytes / elapsed - idle) / 1000,
        "idle_kbit_s": 8 * idle / 1000,
    }


def run(args: argparse.Namespace) -> int:
    from xcodec_stream import XcodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = XcodecModel.from_pretrained(args.model)
    rows = []
    single = asyncio.run(_scenario(model, 1, args, None))
    with _redis() as url:
        spread = asyncio.run(_scenario(model, args.daemons, args, url))
    n, d = args.listeners, args.daemons
    on_host = -(-n // d)
    rows.append(["1 daemon, no Redis", n, "{:.0f} / {:.0f}".format(*single["host"]), "-", "-"])
    rows.append([f"{d} daemons + Redis: listeners on the publisher's daemon", on_host,
                 "{:.0f} / {:.0f}".format(*spread["host"]), f"{spread['room_kbit_s']:.1f}", f"{spread['idle_kbit_s']:.1f}"])  # fmt: skip
    rows.append([f"{d} daemons + Redis: listeners on the {d - 1} others", n - on_host,
                 "{:.0f} / {:.0f}".format(*spread["elsewhere"]), "", ""])  # fmt: skip
    headers = ["setup", "listeners", f"lag p50 / p99 ms ({args.want})", "Redis kbit/s: the room",
               "Redis kbit/s: idle cluster"]  # fmt: skip
    table = markdown_table(headers, rows)
    print(table)
    if args.out:
        body = (
            f"{args.seconds:g} s of speech published in real time (20 ms chunks, preset balanced, "
            f"model {args.model}); {args.listeners} listeners wanting {args.want}, spread evenly over the "
            f"daemons (the publisher's daemon first); all daemons and clients in one process. Lag: when a "
            f"listener has a {'frame' if args.want == 'codes' else 'sample'} minus when the chunk holding "
            f"its last sample was sent (encoder lookahead + step + transport). Redis traffic: bytes in and "
            f"out of redis-server (INFO stats) during the room, minus the cluster's idle traffic "
            f"(heartbeats; measured for 2 s before the room).\n\n"
            f"Machine: {machine()}. Date: {today()}. Command: `xcodec-stream bench cluster "
            f"--listeners {args.listeners} --seconds {args.seconds:g} --want {args.want}`.\n\n{table}\n"
        )
        replace_between(
            args.out,
            "<!-- bench cluster: begin -->",
            "<!-- bench cluster: end -->",
            body,
            "# Deploying xcodec-stream\n",
        )
    return 0
