"""Load on localhost: many concurrent loopback sessions on random:tiny for a bounded time; every input sample
comes back exactly once (no gap, no drop, exact length after flush) and the memory stays flat.

CI runs 50 clients for XCS_LOAD_SECONDS (default 10 s); `XCS_LOAD_SECONDS=60` is the full run of the issue.
On a small CPU the daemon cannot hold 50 real-time streams, so each client sends at real time at most and
never more than half of max_backlog_ms ahead of what the server has consumed ("fast but within backlog":
as fast as the server takes it, never rejected).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import os
import time
from pathlib import Path

import numpy as np
from serving_helpers import running_server, speech

from xcodec_stream.clients.client import Client

CLIENTS = int(os.environ.get("XCS_LOAD_CLIENTS", "50"))
SECONDS = float(os.environ.get("XCS_LOAD_SECONDS", "10"))
CHUNK = 320  # 20 ms at 16 kHz
RATE = 16000


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def trimmed_rss_mb() -> float:
    """RSS after a garbage collection and giving freed heap pages back to the OS (glibc): what is still in
    use, as opposed to free memory the allocator keeps (fragmentation)."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)
        if trim is not None:
            trim(0)
    return rss_mb()


async def load_client(url: str, signal: np.ndarray, seconds: float, start: asyncio.Event) -> dict:
    c = await Client.connect(url, mode="loopback", name="load")
    window = 0.5 * c.ready["limits"]["max_backlog_ms"] * RATE / 1000
    ends: list[int] = []  # input end (samples) of each seq
    consumed = 0
    next_sample = 0  # output must come in order, without gap or repeat
    out_of_order = 0
    errors: list[dict] = []
    done: dict = {}
    progress = asyncio.Event()

    async def receive() -> None:
        nonlocal consumed, next_sample, out_of_order, done
        while True:
            msg = await c.recv()
            if msg.get("seq_end") is not None:
                consumed = ends[msg["seq_end"]]
                progress.set()
            if msg["type"] == "audio":
                out_of_order += msg["sample"] != next_sample
                next_sample = msg["sample"] + msg["pcm"].size
            elif msg["type"] == "error":
                errors.append(msg)
            elif msg["type"] == "done":
                done = msg
                return

    receiver = asyncio.create_task(receive())
    await start.wait()
    t0 = time.monotonic()
    pos = 0
    while time.monotonic() - t0 < seconds and pos + CHUNK <= signal.size:
        delay = t0 + pos / RATE - time.monotonic()
        if delay > 0:  # never faster than real time
            await asyncio.sleep(delay)
        while pos + CHUNK - consumed > window:  # never more than half the backlog ahead of the codec
            progress.clear()
            await progress.wait()
        await c.send_audio(signal[pos : pos + CHUNK])
        pos += CHUNK
        ends.append(pos)
    await c.flush()
    await receiver
    await c.close()
    return {
        "sent": pos,
        "received": next_sample,
        "out_of_order": out_of_order,
        "errors": errors,
        "done": done,
    }


async def test_many_clients_nothing_lost_memory_flat(tiny_model) -> None:
    signal = np.tile(speech(), int(np.ceil(SECONDS * RATE / speech().size)) + 1)
    async with running_server(
        tiny_model, max_sessions=CLIENTS, max_step_ms=200.0, batch_wait_ms=10.0, idle_timeout_s=120.0
    ) as srv:
        start = asyncio.Event()
        tasks = [asyncio.create_task(load_client(srv.url, signal, SECONDS, start)) for _ in range(CLIENTS)]
        while len(srv.sessions) < CLIENTS or any(s.state != "ready" for s in srv.sessions.values()):
            await asyncio.sleep(0.05)
        rss = [(0.0, rss_mb())]  # (seconds since start, MB)
        t0 = time.monotonic()
        start.set()

        async def sample_rss() -> None:
            while True:
                await asyncio.sleep(1.0)
                rss.append((time.monotonic() - t0, rss_mb()))

        sampler = asyncio.create_task(sample_rss())
        results = await asyncio.gather(*tasks)
        wall = time.monotonic() - t0
        sampler.cancel()
        rss.append((time.monotonic() - t0, rss_mb()))
        trimmed_end = trimmed_rss_mb()
        steps = srv.metrics.step_seconds.collect()[0].samples
        batches = srv.metrics.batch_size.collect()[0].samples
    sent = sum(r["sent"] for r in results)
    # "start" = after the warm-up: the first batched steps allocate their working memory once
    warm = next((m for t, m in rss if t >= min(5.0, SECONDS / 2)), rss[-1][1])
    n_steps = next(s.value for s in steps if s.name.endswith("_count"))
    mean_batch = next(s.value for s in batches if s.name.endswith("_sum")) / max(
        1.0, next(s.value for s in batches if s.name.endswith("_count"))
    )
    report = {
        "clients": CLIENTS,
        "seconds": SECONDS,
        "wall_s": round(wall, 1),
        "audio_s_total": round(sent / RATE, 1),
        "audio_s_per_client_min": round(min(r["sent"] for r in results) / RATE, 2),
        "throughput_x_realtime": round(sent / RATE / wall, 2),
        "lost_samples": sum(r["sent"] - r["received"] for r in results),
        "dropped_messages": sum(r["done"].get("dropped", 0) for r in results),
        "errors": sum(len(r["errors"]) for r in results),
        "steps": int(n_steps),
        "mean_batch": round(mean_batch, 1),
        "rss_mb_before": round(rss[0][1], 1),
        "rss_mb_start": round(warm, 1),
        "rss_mb_end": round(rss[-1][1], 1),
        "rss_mb_max": round(max(m for _, m in rss), 1),
        "rss_mb_end_trimmed": round(trimmed_end, 1),
        "rss_mb_every_10s": [round(next(m for t, m in rss if t >= k)) for k in range(0, int(rss[-1][0]), 10)],
    }
    print("\nload test:", json.dumps(report))
    if os.environ.get("XCS_LOAD_REPORT"):
        Path(os.environ["XCS_LOAD_REPORT"]).write_text(json.dumps(report, indent=1) + "\n")
    for r in results:
        assert r["sent"] > 0 and not r["errors"] and r["out_of_order"] == 0
        assert r["done"]["samples_in"] == r["done"]["samples_out"] == r["sent"] == r["received"]
        assert r["done"]["dropped"] == 0
    # flat: what is in use at the end is no more than once warm (generous bound: allocator noise, not a leak)
    assert trimmed_end - warm < 100.0, report
