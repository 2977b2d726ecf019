"""I/O ceiling: WebSocket messages/s one daemon's event loop carries with a codec that does nothing.

The daemon (real server and worker, fake codec: xcodec_stream.bench.io_daemon) runs in a process of its own;
this process is the load generator: N loopback streams, each sending a PCM chunk every chunk period (20 ms:
50 messages/s) and reading every reply. Per N: messages/s in and out, the daemon's CPU, and the lag of each
chunk (sent -> the first reply whose seq_end covers it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np

from .report import machine, markdown_table, today, write_section
from .serve_load import _cpu_seconds, _free_port, _health


def _loop_cpu_seconds(pid: int) -> float:
    """CPU time of the process's main thread: the daemon's event loop (the worker is another thread)."""
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


GROUPS = 10  # each chunk period is cut in this many slots; a tenth of the streams sends in each
GRACE_S = 1.0  # after the last chunk: time for the replies to the chunks of the window to come back
MAX_P99_LAG_MS = 100.0  # a level is carried when its chunks are answered this fast (and nothing is lost)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--streams", default="100,200,400,800", help="comma-separated numbers of streams")
    p.add_argument("--seconds", type=float, default=5.0, help="measured seconds per level (default 5)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds per level before measuring")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="audio per message (default 20 ms)")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        help="daemon [worker] batch_wait_ms (configs/default.toml: 10)",
    )
    p.add_argument("--out", default="docs/BENCHMARKS.md", help="markdown file to update ('' = print only)")


@dataclass
class _Stream:
    ws: object
    sent: list[float] = field(default_factory=list)  # send time of each seq
    acked: int = -1  # highest seq_end seen
    n_out: int = 0  # messages received inside the window
    dropped: int = 0
    errors: int = 0


@dataclass
class _Window:
    start: float = float("inf")
    end: float = float("inf")
    lags: list[float] = field(default_factory=list)


async def _open(url: str, window: _Window) -> tuple[_Stream, asyncio.Task]:
    from websockets.asyncio.client import connect

    ws = await connect(url, compression=None, max_size=None, open_timeout=60)
    hello = {"type": "hello", "version": 1, "mode": "loopback", "sample_rate": 16000, "format": "f32"}
    await ws.send(msgpack.packb(hello))
    ready = msgpack.unpackb(await ws.recv())
    if ready["type"] != "ready":
        raise RuntimeError(f"daemon refused a stream: {ready}")
    st = _Stream(ws)
    return st, asyncio.create_task(_read(st, window))


async def _read(st: _Stream, window: _Window) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        async for data in st.ws:
            now = time.monotonic()
            msg = msgpack.unpackb(data)
            if window.start <= now <= window.end + GRACE_S:
                st.n_out += now <= window.end
                kind = msg["type"]
                if kind == "error":
                    st.errors += 1
                st.dropped = max(st.dropped, msg.get("dropped", 0))
                end = msg.get("seq_end")
                if end is not None and end > st.acked:
                    window.lags += [now - t for t in st.sent[st.acked + 1 : end + 1] if t >= window.start]
            end = msg.get("seq_end")
            if end is not None:
                st.acked = max(st.acked, end)
    except ConnectionClosed:
        pass


async def _level(url: str, n: int, args: argparse.Namespace, pid: int) -> dict:
    window = _Window()
    sem = asyncio.Semaphore(64)  # connect in parallel, not all at once (the daemon's accept queue)

    async def one() -> tuple[_Stream, asyncio.Task]:
        async with sem:
            return await _open(url, window)

    opened = await asyncio.gather(*(one() for _ in range(n)))
    streams = [s for s, _ in opened]
    readers = [t for _, t in opened]
    samples = int(16000 * args.chunk_ms / 1000)
    pcm = (0.1 * np.sin(np.arange(samples) * 0.05)).astype("<f4")
    pcm_map = {"dtype": "<f4", "shape": [samples], "data": pcm.tobytes()}
    period = args.chunk_ms / 1000.0
    slot = period / GROUPS
    t0 = time.monotonic()
    window.start, window.end = t0 + args.warmup, t0 + args.warmup + args.seconds
    cpu0 = gen0 = None
    k = 0
    while True:
        target = t0 + k * slot
        now = time.monotonic()
        if now < target:
            await asyncio.sleep(target - now)
        now = time.monotonic()
        if now >= window.end:
            break
        if cpu0 is None and now >= window.start:
            cpu0, loop0, gen0, c0 = _cpu_seconds(pid), _loop_cpu_seconds(pid), time.process_time(), now
        for st in streams[k % GROUPS :: GROUPS]:
            seq = len(st.sent)
            st.sent.append(time.monotonic())
            await st.ws.send(msgpack.packb({"type": "audio", "seq": seq, "pcm": pcm_map}))
        k += 1
    cpu, loop, gen = _cpu_seconds(pid) - cpu0, _loop_cpu_seconds(pid) - loop0, time.process_time() - gen0
    wall = time.monotonic() - c0
    await asyncio.sleep(GRACE_S)
    in_window = sum(1 for st in streams for t in st.sent if t >= window.start)
    unanswered = sum(1 for st in streams for t in st.sent[st.acked + 1 :] if t >= window.start)
    await asyncio.gather(*(st.ws.close() for st in streams), return_exceptions=True)
    await asyncio.gather(*readers, return_exceptions=True)
    lags = 1000 * np.asarray(window.lags) if window.lags else np.full(1, np.nan)
    row = {
        "streams": n,
        "offered_in_s": n * 1000.0 / args.chunk_ms,
        "in_s": in_window / args.seconds,
        "out_s": sum(st.n_out for st in streams) / args.seconds,
        "daemon_cpu_pct": 100.0 * cpu / wall,
        "loop_cpu_pct": 100.0 * loop / wall,
        "generator_cpu_pct": 100.0 * gen / wall,
        "lag_p50_ms": float(np.percentile(lags, 50)),
        "lag_p99_ms": float(np.percentile(lags, 99)),
        "unanswered": unanswered,
        "dropped": sum(st.dropped for st in streams),
        "errors": sum(st.errors for st in streams),
    }
    row["carried"] = (
        row["in_s"] >= 0.97 * row["offered_in_s"]
        and row["lag_p99_ms"] <= MAX_P99_LAG_MS
        and not (row["unanswered"] or row["dropped"] or row["errors"])
    )
    return row


def _start_daemon(max_sessions: int, batch_wait_ms: float) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    options = {
        "port": port,
        "max_sessions": max_sessions,
        "idle_timeout_s": 120.0,
        "batch_wait_ms": batch_wait_ms,
        "torch_threads": 1,
        "log_level": "warning",
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "xcodec_stream.bench.io_daemon", json.dumps(options)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while _health(port) is None:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("daemon did not come up within 120 s")
        time.sleep(0.2)
    return proc, port


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(args: argparse.Namespace) -> int:
    levels = sorted({int(v) for v in args.streams.split(",") if v.strip()})
    if not levels or levels[0] < 1:
        raise ValueError("--streams must list positive integers, e.g. 100,200,400")
    t_start = time.monotonic()
    load_before = os.getloadavg()[0]
    proc, port = _start_daemon(max(levels) + 8, args.batch_wait_ms)
    rows = []
    try:
        for n in levels:
            row = asyncio.run(_level(f"ws://127.0.0.1:{port}", n, args, proc.pid))
            rows.append(row)
            print(
                f"N={n}: in {row['in_s']:.0f}/s (offered {row['offered_in_s']:.0f}), out {row['out_s']:.0f}/s, "
                f"lag p50 {row['lag_p50_ms']:.1f} / p99 {row['lag_p99_ms']:.1f} ms, daemon CPU "
                f"{row['daemon_cpu_pct']:.0f}% (loop {row['loop_cpu_pct']:.0f}%), generator CPU {row['generator_cpu_pct']:.0f}%",
                file=sys.stderr,
            )
    finally:
        _stop(proc)
    carried = [r for r in rows if r["carried"]]
    best = max(carried, key=lambda r: r["in_s"] + r["out_s"]) if carried else None
    table = markdown_table(
        ["streams", "offered in/s", "in msg/s", "out msg/s", "lag p50 ms", "lag p99 ms",
         "daemon CPU %: all / event loop", "generator CPU %", "unanswered", "dropped", "carried"],
        [[r["streams"], f"{r['offered_in_s']:.0f}", f"{r['in_s']:.0f}", f"{r['out_s']:.0f}", r["lag_p50_ms"],
          r["lag_p99_ms"], f"{r['daemon_cpu_pct']:.0f} / {r['loop_cpu_pct']:.0f}", f"{r['generator_cpu_pct']:.0f}",
          r["unanswered"],
          r["dropped"], "yes" if r["carried"] else "**no**"] for r in rows],
    )  # fmt: skip
    command = (
        f"xcodec-stream bench io --streams {args.streams} --seconds {args.seconds:g} "
        f"--chunk-ms {args.chunk_ms:g} --batch-wait-ms {args.batch_wait_ms:g}"
    )
    ceiling = (
        f"{best['in_s']:.0f} in + {best['out_s']:.0f} out messages/s ({best['streams']} streams, daemon CPU "
        f"{best['daemon_cpu_pct']:.0f} %)"
        if best
        else "not reached: no level was carried"
    )
    body = "\n".join(
        [
            "## I/O ceiling: messages/s one daemon carries with a codec that does nothing",
            "",
            f"- Machine: {machine()}",
            f"- Date: {today()}; load average before the run: {load_before:.1f} on {os.cpu_count()} CPUs "
            "(other jobs share the machine when it is above 0)",
            f"- Command: `{command}` ({time.monotonic() - t_start:.0f} s in all)",
            "- What ran where: the daemon (the real server: event loop, sessions, flow control, batching worker "
            "thread; the fake codec of `xcodec_stream/serving/fake_codec.py`, which answers a 20 ms chunk with its "
            "20 ms at once) in one process; the load generator (every stream's socket, one asyncio loop) in "
            "another. "
            + (
                "Both on the same CPUs: the generator's CPU is taken from the daemon's, so the ceiling is a "
                "lower bound."
                if (os.cpu_count() or 1) <= 4
                else "The ceiling is a lower bound while the generator's CPU % is near 100."
            ),
            f"- Each stream: loopback, 16 kHz f32, one {args.chunk_ms:g} ms chunk every {args.chunk_ms:g} ms "
            "(staggered), every reply read. In = chunks sent, out = messages received (audio, ack, error), per "
            f"second over {args.seconds:g} s after {args.warmup:g} s of warm-up. Lag = chunk sent -> the first "
            "reply whose seq_end covers it (both ways through the daemon's loop, its worker and the "
            "generator's loop). Daemon CPU % = its CPU time / wall time (100 % = one core), all threads and the "
            "event loop's thread alone (the rest is the worker thread: gathering, resampling, slicing per session; "
            "both share one GIL).",
            f"- Carried = at least 97 % of the offered chunks sent, lag p99 <= {MAX_P99_LAG_MS:.0f} ms, nothing "
            f"unanswered, dropped or refused. **Ceiling: {ceiling}.**",
            "",
            table,
        ]
    )
    print(body)
    if args.out:
        name = "io" if args.chunk_ms == 20 else f"io-{args.chunk_ms:g}ms"  # one section per chunk size
        path = write_section(name, body, args.out)
        data = path.parent / "bench" / f"{name}.json"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text(json.dumps({"date": today(), "machine": machine(), "rows": rows}, indent=1))
        print(f"wrote {path} and {data}", file=sys.stderr)
    return 0
