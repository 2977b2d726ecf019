"""The engine alone with N sessions stepping together: what one static step costs as N grows.

No daemon, no sockets: N rows of one encoder/decoder pair move together in loopback (every row's chunk is
one step), as the model worker's tick runs them when every session is due. It separates the engine's
scaling from the serving layer's (`bench serve-load` measures both, with the load generator on the same
machine). The issue's target for a tick: at most the N=1 step plus N times one session's arithmetic share
(its FLOPs at the matmul throughput measured in the same run).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
import warnings

import numpy as np
import torch

from xcodec_stream.bench.report import machine, markdown_table, sync, today, write_section


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="random:tiny", help="checkpoint (default random:tiny)")
    p.add_argument("--sessions", default="1,16,64,100", help="comma-separated N (default 1,16,64,100)")
    p.add_argument("--latency", default="balanced", help="preset of every session (default balanced)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per N (default 20)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--compile", default="eager", help="step mode: eager, compile, cuda-graphs (default eager)"
    )
    p.add_argument("--output", default="docs/BENCHMARKS.md", help="markdown file to update ('' to not write)")


def _pair(model, n: int, latency: str, compile: str) -> tuple:
    # no warm_up(): it would compile every bucket up to n; the untimed first steps build the one used
    enc = model.streaming_encoder(batch_size=n, latency=latency, compile=compile)
    dec = model.streaming_decoder(batch_size=n, latency=latency, compile=compile)
    for s in range(n):  # the decoder steps when the codes arrive, as in a loopback session
        dec.reset(s, lead=enc.lead_for(dec.step_frames))
    return enc, dec


def _session_gflop(model, latency: str, chunk: int, x: torch.Tensor) -> float:
    """GFLOP of one session's loopback step (torch's FLOP counter, one row, warm)."""
    from torch.utils.flop_counter import FlopCounterMode

    enc, dec = _pair(model, 1, latency, "eager")
    with torch.inference_mode():
        for i in range(4):
            dec.step(enc.step(x[None, i * chunk : (i + 1) * chunk]))
        with FlopCounterMode(display=False) as counter:
            dec.step(enc.step(x[None, 4 * chunk : 5 * chunk]))
    return counter.get_total_flops() / 1e9


def run(args: argparse.Namespace) -> int:
    from xcodec_stream.bench.stream import _matmul_gflops, _signal
    from xcodec_stream.cli.encode import load_model

    torch.set_num_threads(args.threads)
    # N=1 is always measured (first): the target is built on its step
    ns = sorted({1, *(int(v) for v in args.sessions.split(",") if v.strip())})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.model, args.device, "float32")
    probe = model.streaming_encoder(latency=args.latency)
    chunk = probe.step_frames * probe.frame_size
    period_ms = 1000 * chunk / model.sample_rate
    warm = 8
    x = _signal((warm + args.steps + 2) * chunk / model.sample_rate)
    peak = _matmul_gflops(args.device)
    share_ms = 1000 * _session_gflop(model, args.latency, chunk, x) / peak
    rows, base = [], 0.0  # base: the N=1 step, set by the first row
    for n in ns:
        enc, dec = _pair(model, n, args.latency, args.compile)
        pcm = x[None].expand(n, -1).to(args.device)
        times = []
        with torch.inference_mode():
            for k in range(warm + args.steps):
                sync(args.device)
                t0 = time.perf_counter()
                dec.step(enc.step(pcm[:, k * chunk : (k + 1) * chunk]))
                sync(args.device)
                if k >= warm:
                    times.append(1000 * (time.perf_counter() - t0))
        p50, p99 = float(np.percentile(times, 50)), float(np.percentile(times, 99))
        if n == 1:
            base = p50
        target = base + n * share_ms
        rows.append(
            [
                n,
                f"{p50:.1f}",
                f"{p99:.1f}",
                f"{p50 / period_ms:.2f}",
                "yes" if p99 <= period_ms else "no",
                f"{p50 / n:.2f}",
                f"{target:.1f}",
                f"{p50 / target:.2f}",
            ]
        )
        print(" | ".join(str(v) for v in rows[-1]), file=sys.stderr)
        del enc, dec
    table = markdown_table(
        [
            "sessions",
            "step p50 ms",
            "step p99 ms",
            "load (p50 / step period)",
            "real time (p99 <= period)",
            "ms per session",
            "target ms (N=1 step + N x arithmetic)",
            "step / target",
        ],
        rows,
    )
    print(table)
    if args.output:
        _write(args, table, period_ms, share_ms, peak)
    return 0


def _write(args, table: str, period_ms: float, share_ms: float, peak: float) -> None:
    command = "xcodec-stream " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if "batch" in sys.argv else ""
    lines = [
        f"## Engine alone: N sessions in one step ({args.model}, {args.latency}, {args.device}, {args.compile})",
        "",
        f"- Machine: {machine()}",
        f"- Date: {today()}",
        f"- Command: `{command or 'xcodec-stream bench batch'}`",
        f"- One encoder/decoder pair of N rows in loopback, every row due at every step ({period_ms:.0f} ms of "
        "audio per row per step), no daemon: the cost of the worker's tick when all N sessions step together. "
        f"Arithmetic share of one session per step: {share_ms:.3f} ms (its FLOPs at {peak:.0f} GFLOP/s, the "
        "fp32 matmul throughput measured in the same run). Target = the N=1 step + N x that share.",
        "",
        table,
    ]
    name = f"batch-{args.model.replace(':', '-')}-{args.device}"
    print(f"wrote {write_section(name, chr(10).join(lines), args.output)}", file=sys.stderr)
