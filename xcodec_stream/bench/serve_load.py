"""Server load: N concurrent real-time loopback clients against a daemon in another process; largest real-time N."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from ..serving.config import engines_text
from .report import cpu, machine, markdown_table, pyplot, save_figure, today, write_section

CLIP = Path(__file__).resolve().parents[2] / "tests" / "data" / "codec2_speech_orig_16k.wav"
# A run is real time when every chunk is consumed soon after it is sent and nothing is lost.
MAX_P99_PROCESSING_MS = 300.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="random:full", help="model the daemon serves (default random:full)")
    p.add_argument("--clients", default="1,2,4,8", help="comma-separated numbers of concurrent clients")
    p.add_argument("--seconds", type=float, default=10.0, help="audio each client streams, in real time")
    p.add_argument("--chunk-ms", type=float, default=20.0, help="audio per message (default 20 ms)")
    p.add_argument("--latency", default="balanced", help="latency preset of every session")
    p.add_argument(
        "--sample-rate",
        type=int,
        default=16000,
        help="the clients' sample rate (default 16000, the codec's; 48000 as browsers send: resampled in the daemon)",
    )
    p.add_argument("--device", default="cpu", help="daemon device: cpu, cuda, auto")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per engine (default 0: the daemon's choice, the cores shared among its engines)",
    )
    p.add_argument(
        "--batch-wait-ms", type=float, default=10.0, help="daemon [worker] batch_wait_ms (default 10)"
    )
    p.add_argument(
        "--compile",
        default="eager",
        choices=("auto", "eager", "compile", "cuda-graphs"),
        help="daemon [worker] compile: how the codec's step runs (default eager)",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=2,
        help="daemon [worker] processes: engine processes (default 2, as configs/default.toml; 1 on a GPU); 0 = "
        "the engine in a thread of the daemon",
    )
    p.add_argument("--keep-going", action="store_true", help="run every N even after one fails real time")
    p.add_argument(
        "--no-write", action="store_true", help="print the table only; leave docs/BENCHMARKS.md alone"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


def start_daemon(args: argparse.Namespace, max_sessions: int) -> tuple[subprocess.Popen, int, Path]:
    port = _free_port()
    cfg = Path(tempfile.mkdtemp(prefix="xcodec-bench-")) / "bench.toml"
    cfg.write_text(
        f"[server]\nmax_sessions = {max_sessions}\nidle_timeout_s = 120.0\n"
        f'[stream]\npresets = ["{args.latency}"]\ndefault_latency = "{args.latency}"\n'
        f"[worker]\ntorch_threads = {args.threads}\nbatch_wait_ms = {args.batch_wait_ms}\n"
        f'compile = "{args.compile}"\nprocesses = {args.processes}\n'
        '[log]\nlevel = "warning"\n'
    )
    cmd = [
        sys.executable,
        "-m",
        "xcodec_stream.cli.main",
        "serve",
        "--config",
        str(cfg),
        "--model",
        args.model,
    ]
    cmd += ["--port", str(port), "--device", args.device]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while _health(port) is None:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() - t0 > 600:
            proc.kill()
            raise RuntimeError("daemon did not come up within 600 s")
        time.sleep(0.5)
    return proc, port, cfg


async def _one_client(url: str, x: np.ndarray, chunk_ms: float, latency: str, rate: int) -> dict:
    from xcodec_stream.clients.client import Client, stream

    client = await Client.connect(url, mode="loopback", latency=latency, sample_rate=rate)
    try:
        r = await stream(client, x, chunk_ms=chunk_ms, realtime=True)
    finally:
        await client.close()
    return {
        "processing": r.latency.processing_ms,
        "end_to_end": r.latency.end_to_end_ms,
        "dropped": int(r.done.get("dropped", 0)),
        "complete": r.done.get("samples_out") == x.size and r.audio.size == x.size,
        "algorithmic": r.ready["algorithmic_latency_ms"],
    }


async def run_level(
    port: int, n: int, x: np.ndarray, chunk_ms: float, latency: str, pids: list[int], rate: int = 16000
) -> dict:
    """One level of N clients sending `x` at `rate`; `pids`: the daemon's processes (its engine processes
    too, when it has them)."""
    url = f"ws://127.0.0.1:{port}"
    cpu0, t0 = sum(map(_cpu_seconds, pids)), time.monotonic()

    # stagger starts over one chunk so that the clients do not all send at the same instant
    async def delayed(i: int) -> dict:
        await asyncio.sleep(i * chunk_ms / 1000.0 / max(n, 1))
        return await _one_client(url, x, chunk_ms, latency, rate)

    results = await asyncio.gather(*(delayed(i) for i in range(n)))
    wall = time.monotonic() - t0
    cpu = sum(map(_cpu_seconds, pids)) - cpu0
    proc = np.concatenate([r["processing"] for r in results])
    e2e = np.concatenate([r["end_to_end"] for r in results])
    health = _health(port) or {}
    row = {
        "n": n,
        "proc_p50": float(np.percentile(proc, 50)),
        "proc_p99": float(np.percentile(proc, 99)),
        "e2e_p50": float(np.percentile(e2e, 50)),
        "e2e_p95": float(np.percentile(e2e, 95)),
        "e2e_p99": float(np.percentile(e2e, 99)),
        "dropped": sum(r["dropped"] for r in results),
        "complete": all(r["complete"] for r in results),
        "cpu_pct": 100.0 * cpu / wall,
        "algorithmic": results[0]["algorithmic"],
        "max_tick_ms": health.get("worker", {}).get("max_tick_ms", float("nan")),
        "overhead_p50": health.get("worker", {}).get("overhead_p50_ms", float("nan")),
        "overhead_p99": health.get("worker", {}).get("overhead_p99_ms", float("nan")),
        "rss_mib": sum(map(_rss_mib, pids)),
    }
    row["realtime"] = row["complete"] and row["dropped"] == 0 and row["proc_p99"] <= MAX_P99_PROCESSING_MS
    return row


def run(args: argparse.Namespace) -> int:
    import soundfile as sf

    levels = sorted({int(v) for v in args.clients.split(",") if v.strip()})
    if not levels or levels[0] < 1:
        raise ValueError("--clients must list positive integers, e.g. 1,2,4,8")
    clip, rate = sf.read(CLIP, dtype="float32")
    n_samples = int(args.seconds * rate)
    x = np.resize(clip, n_samples).astype(np.float32)
    if args.sample_rate != rate:
        from xcodec_stream.streaming.resample import resample

        x, rate = resample(x, rate, args.sample_rate), args.sample_rate
    load_before = os.getloadavg()[0]
    proc, port, cfg = start_daemon(args, max(levels))
    rows: list[dict] = []
    try:
        health = _health(port) or {}
        pids = [proc.pid, *health.get("engine_pids", [])]
        warm = x[: int(rate)]  # 1 s
        asyncio.run(run_level(port, 1, warm, args.chunk_ms, args.latency, pids, rate))
        for n in levels:
            row = asyncio.run(run_level(port, n, x, args.chunk_ms, args.latency, pids, rate))
            rows.append(row)
            print(
                f"N={n}: real time {'yes' if row['realtime'] else 'NO'}, processing p50 {row['proc_p50']:.0f} / "
                f"p99 {row['proc_p99']:.0f} ms, end to end p50 {row['e2e_p50']:.0f} / p99 {row['e2e_p99']:.0f} ms, "
                f"dropped {row['dropped']}, server CPU {row['cpu_pct']:.0f}%",
                file=sys.stderr,
            )
            if not row["realtime"] and not args.keep_going:
                break
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        cfg.unlink(missing_ok=True)
    base = rows[0]
    engines = engines_text(args.processes)
    # what sets this run apart from the default one, for its heading and its plot label
    settings = (f", step {args.compile}" if args.compile != "eager" else "") + (
        f", clients at {args.sample_rate} Hz" if args.sample_rate != 16000 else ""
    )
    held = [r["n"] for r in rows if r["realtime"]]
    table = markdown_table(
        [
            "clients",
            "real time",
            "processing p50 ms",
            "processing p99 ms",
            "end-to-end p50 ms",
            "end-to-end p95 ms",
            "end-to-end p99 ms",
            "p99 e2e / N=1",
            "dropped msgs",
            "server CPU %",
            "longest step ms",
            "server overhead p50 / p99 ms per tick",
            "daemon RSS MiB",
        ],
        [
            [
                r["n"],
                "yes" if r["realtime"] else "**no**",
                r["proc_p50"],
                r["proc_p99"],
                r["e2e_p50"],
                r["e2e_p95"],
                r["e2e_p99"],
                r["e2e_p99"] / base["e2e_p99"],
                r["dropped"],
                r["cpu_pct"],
                r["max_tick_ms"],
                f"{r['overhead_p50']:.2f} / {r['overhead_p99']:.2f}",
                f"{r['rss_mib']:.0f}",
            ]
            for r in rows
        ],
    )
    command = "xcodec-stream bench serve-load " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in (
            ("model", args.model),
            ("clients", args.clients),
            ("seconds", args.seconds),
            ("chunk_ms", args.chunk_ms),
            ("latency", args.latency),
            ("sample_rate", args.sample_rate),
            ("device", args.device),
            ("threads", args.threads),
            ("batch_wait_ms", args.batch_wait_ms),
            ("processes", args.processes),
        )
    )
    body = "\n".join(
        [
            f"## Server load: concurrent real-time loopback clients ({args.model}, {args.device}{settings}"
            + (f", {args.latency})" if args.latency != "balanced" else ")"),
            "",
            f"- Machine: {machine()} (daemon: {engines}, {args.threads or 'the default number of'} torch threads "
            f"each; device reported by the daemon: {health.get('device', '?')})",
            f"- Date: {today()}; load average before the run: {load_before:.1f} on {os.cpu_count()} CPUs "
            "(other jobs share the machine when it is above 0)",
            f"- Command: `{command}`",
            f"- Each client streams {args.seconds:g} s of speech in {args.chunk_ms:g} ms chunks in real time ({rate / 1000:g} kHz, "
            f"loopback, preset `{args.latency}`, algorithmic latency {base['algorithmic']:.0f} ms), from one process; "
            "the daemon runs in another. Processing = chunk sent -> consumed by the codec (acknowledged); "
            "end to end = chunk sent -> its last sample back (includes the algorithmic latency).",
            "- Server CPU % = the daemon's CPU time (its engine process's included) / wall time (100 % = one core "
            "busy); RSS likewise (the shared weights counted twice). Server overhead = the "
            "worker's time per tick outside the codec's step/flush calls (gathering input, resampling, slicing, "
            "bookkeeping), over the daemon's last 1000 ticks. The engines hold every slot's state from the start: "
            "RSS does not grow with N.",
            f"- Real time = complete output, nothing dropped, processing p99 <= {MAX_P99_PROCESSING_MS:.0f} ms. "
            f"Baseline for the ratio: N=1 in the same run.",
            f"- **Largest N in real time: {max(held) if held else 'none (not even one stream)'}**",
            "",
            table,
        ]
    )
    print(body)
    if not args.no_write:
        default = args.model == "random:full" and args.device == "cpu"
        name = (
            (
                "serve-load"
                if default
                else f"serve-load-{args.model.replace(':', '-').replace('/', '-')}-{args.device}"
            )
            + (f"-{args.latency}" if args.latency != "balanced" else "")
            + (f"-p{args.processes}" if args.processes != 2 else "")
            + (f"-{args.compile}" if args.compile != "eager" else "")
            + (f"-{args.sample_rate // 1000}k" if args.sample_rate != 16000 else "")
        )
        path = write_section(name, body)
        print(f"wrote {path}", file=sys.stderr)
        data = path.parent / "bench" / f"{name}.json"
        data.parent.mkdir(parents=True, exist_ok=True)
        label = (
            f"{args.model}, {health.get('device', args.device)} ({cpu()}), {args.latency}, "
            f"{args.chunk_ms:g} ms chunks, {engines}{settings}"
        )
        data.write_text(json.dumps({"label": label, "date": today(), "rows": rows}, indent=1, default=float))
        print(f"wrote {data} and {plot_scaling(data.parent, path.parent / 'scaling.png')}", file=sys.stderr)
    return 0


def plot_scaling(folder: Path, out: Path) -> Path:
    """Streams vs p99 latency for every serve-load run saved in `folder` (CPU and GPU runs side by side)."""
    plt = pyplot()
    runs = sorted(folder.glob("serve-load*.json"))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4 + 0.17 * (len(runs) + 1)))
    for f in runs:
        run = json.loads(f.read_text())
        n = [r["n"] for r in run["rows"]]
        for ax, key in ((ax1, "proc_p99"), (ax2, "e2e_p99")):
            (line,) = ax.plot(
                n, [r[key] for r in run["rows"]], marker="o", label=f"{run['label']} ({run['date']})"
            )
            held = [(r["n"], r[key]) for r in run["rows"] if not r["realtime"]]
            if held:  # runs that missed real time: hollow markers
                ax.plot(*zip(*held, strict=True), "o", mfc="white", color=line.get_color())
    ax1.axhline(MAX_P99_PROCESSING_MS, color="grey", ls="--", lw=1, label="real-time limit")
    for ax, title in (
        (ax1, "processing p99 (chunk sent -> consumed)"),
        (ax2, "end-to-end p99 (chunk sent -> audio back)"),
    ):
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="concurrent real-time loopback streams",
            ylabel="ms",
            title=title,
        )
        ax.grid(True, which="both", alpha=0.3)
    # below both panels: run labels are long (model, machine, settings, date)
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", fontsize=7, ncol=1, frameon=False)
    return save_figure(
        fig,
        out,
        "xcodec-stream serve-load: streams vs p99 latency (hollow: not real time)",
        fontsize=10,
        bottom=(0.1 + 0.17 * len(labels)) / fig.get_figheight(),  # a legend line is ~0.17 inch
    )
