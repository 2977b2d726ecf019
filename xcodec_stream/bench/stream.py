"""Single-stream streaming loopback (encode + decode) per preset and chunk size, against offline in the same run.

Each step feeds one chunk to the streaming encoder and its codes to the streaming decoder, as a real-time
client would; the time of every step is recorded. RTF = compute time / audio time (< 1: faster than real
time). The offline model (whole-signal encode + decode) is timed on the same audio in the same run as the
baseline. A long stream then checks that the step time at minute 10 equals the one at minute 1, and the
time is split by part (acoustic encoder, semantic model windows, rest of the encoder, decoder).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
import warnings

import numpy as np
import torch

from xcodec_stream.bench.report import machine, markdown_table, sync, today, write_section


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default="random:full", help="checkpoint: random:full (default), hub id or directory"
    )
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--chunk-ms", default="20,40,80", help="comma-separated chunk sizes in ms (default 20,40,80)"
    )
    p.add_argument("--presets", default="exact,balanced,low", help="comma-separated presets (default: all)")
    p.add_argument(
        "--seconds", type=float, default=10.0, help="audio per measurement in seconds (default 10)"
    )
    p.add_argument(
        "--long-minutes",
        type=float,
        default=10.0,
        help="length of the long stream; step times are reported at minute 1 and at its end (default 10; 0 skips)",
    )
    p.add_argument("--long-preset", default="balanced", help="preset of the long stream (default balanced)")
    p.add_argument(
        "--long-chunk-ms", type=float, default=40.0, help="chunk of the long stream in ms (default 40)"
    )
    p.add_argument(
        "--compile",
        default="eager",
        help="comma-separated step modes to measure: eager, compile (inductor), cuda-graphs (default eager)",
    )
    p.add_argument("--output", default="docs/BENCHMARKS.md", help="markdown file to update ('' to not write)")


def _signal(seconds: float, seed: int = 1) -> torch.Tensor:
    from xcodec_stream.model.random_init import calibration_signal

    n = int(round(seconds * 16000 / 320)) * 320
    return torch.from_numpy(calibration_signal(seconds=n / 16000, seed=seed))


class _PartTimer:
    """Wall time spent in a few methods of the engines (instance attributes wrapped; benchmark only)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def wrap(self, obj: object, name: str, label: str) -> None:
        fn = getattr(obj, name)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - t0

        setattr(obj, name, timed)


_ENGINES: dict[tuple[int, str, str], tuple] = {}


def _engines(model, preset: str, compile: str) -> tuple:
    """A fresh session on an encoder/decoder pair; compiled pairs are built (and compiled) once per run."""
    key = (id(model), preset, compile)
    if compile == "eager" or key not in _ENGINES:
        enc = model.streaming_encoder(latency=preset, compile=compile)
        dec = model.streaming_decoder(latency=preset, compile=compile)
        t0 = time.perf_counter()
        enc.warm_up()  # compiled: every bucket before the clock starts
        dec.warm_up()
        if compile != "eager":
            print(f"{preset}: {compile} step built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        _ENGINES[key] = (enc, dec)
    enc, dec = _ENGINES[key]
    enc.reset()
    dec.reset(0, lead=enc.lead_for(dec.step_frames))  # the decoder steps when the codes arrive
    return enc, dec


def _loopback(
    model, preset: str, x: torch.Tensor, chunk: int, parts: _PartTimer | None = None, compile: str = "eager"
):
    """Stream x through encoder and decoder in chunks; returns (step times s, total s, samples out)."""
    enc, dec = _engines(model, preset, compile)
    if parts is not None:
        # a speculating encoder keeps the tail's end (`step_kept`, which may run the graph's layers directly)
        parts.wrap(enc.acoustic, "step_kept" if enc.speculative else "step", "acoustic encoder")
        parts.wrap(enc.semantic, "window_hidden", "semantic model windows")
        parts.wrap(enc.semantic, "cached_hidden", "semantic model windows")  # with the key/value cache
        parts.wrap(dec, "_run", "decoder")
        parts.wrap(enc, "_run", "encoder (all)")
    times = []
    out = 0
    t_start = time.perf_counter()
    for i in range(0, x.shape[0], chunk):
        t0 = time.perf_counter()
        audio = dec.step(enc.step(x[None, i : i + chunk]))
        times.append(time.perf_counter() - t0)
        out += audio.shape[-1]
    out += dec.step(enc.flush()).shape[-1] + dec.flush().shape[-1]
    return np.array(times), time.perf_counter() - t_start, out, enc, dec


def _run_once(model, preset: str | None, x: torch.Tensor, chunk: int) -> None:
    """Streaming loopback of x with `preset` in chunks of `chunk`, or offline encode + decode when None: what
    the FLOP counter and the shape recorder watch."""
    with torch.inference_mode():
        if preset is None:
            model.decode(model.encode(x[None, None]).audio_codes)
        else:
            _loopback(model, preset, x, chunk)


def _gflop_per_audio_second(model, preset: str | None, x: torch.Tensor, chunk: int) -> float:
    """Matmul/conv/attention GFLOP (torch's FLOP counter) per second of audio of `_run_once`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _run_once(model, preset, x, chunk)
    return counter.get_total_flops() / 1e9 / (x.shape[0] / model.sample_rate)


def _shape_bound(model, preset: str | None, x: torch.Tensor, chunk: int) -> float:
    """RTF of `_run_once`'s matmul/conv/attention calls alone, each timed at its own shapes (`op_shapes`)."""
    from xcodec_stream.bench.op_shapes import record, replay_seconds

    calls = record(lambda: _run_once(model, preset, x, chunk))
    return replay_seconds(calls) / (x.shape[0] / model.sample_rate)


def _matmul_gflops(device: str, reps: int = 5) -> float:
    """Measured fp32 matmul throughput (GFLOP/s, best of `reps`) with the threads set: the ceiling that
    FLOP-bound code can reach here."""
    n = 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best / 1e9


def _read_gbs(device: str, reps: int = 3) -> float:
    """Measured memory read bandwidth (GB/s, best of `reps`: a sum over 256 MB) with the threads set."""
    a = torch.ones(64 * 2**20, device=device)
    best = float("inf")
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        a.sum().item()
        best = min(best, time.perf_counter() - t0)
    return a.numel() * 4 / best / 1e9


def _weight_gb_per_audio_second(model, enc, dec) -> float:
    """GB of weights a single stream's steps read per audio second: every step reads every weight its
    engine uses once (a few frames against each matrix), whatever the number of frames."""

    def gb(*modules) -> float:
        return sum(p.numel() * p.element_size() for m in modules for p in m.parameters()) / 1e9

    q = model.quantizer.embed.numel() * model.quantizer.embed.element_size() / 1e9
    enc_gb = gb(model.acoustic_encoder, model.semantic_model, model.encoder_semantic, model.fc) + q
    dec_gb = gb(model.fc2, model.acoustic_decoder) + q
    rate = model.config.frame_rate
    return enc_gb * rate / enc.step_frames + dec_gb * rate / dec.step_frames


def _offline(model, x: torch.Tensor, reps: int = 2) -> float:
    xp = x[None, None]
    best = []
    for _ in range(reps):
        t0 = time.perf_counter()
        codes = model.encode(xp).audio_codes
        model.decode(codes)
        best.append(time.perf_counter() - t0)
    return float(np.median(best))


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    from xcodec_stream.cli.encode import load_model

    chunks_ms = [float(c) for c in args.chunk_ms.split(",") if c.strip()]
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.model, args.device, "float32")
    sr = model.sample_rate
    x = _signal(args.seconds)
    seconds = x.shape[0] / sr
    _loopback(model, "balanced", x[:sr], 640)  # warm-up (allocator, kernels)
    offline = _offline(model, x)
    peak = _matmul_gflops(args.device)
    read = _read_gbs(args.device)
    x_flops = x[: 2 * sr]  # FLOPs are counted on 2 s (they do not depend on the signal)
    gflop = _gflop_per_audio_second(model, None, x_flops, 0)
    shapes = _shape_bound(model, None, x_flops, 0)
    rows = [
        [
            "offline encode + decode (whole signal)",
            "-",
            "-",
            f"{offline / seconds:.2f}",
            "1.00",
            "-",
            "-",
            "-",
            f"{gflop:.1f}",
            f"{gflop / peak:.2f}",
            "-",
            f"{shapes:.2f}",
        ]
    ]
    print(
        f"offline: {offline:.2f} s for {seconds:.1f} s of audio (RTF {offline / seconds:.2f})",
        file=sys.stderr,
    )
    breakdown = None
    modes = [m.strip() for m in args.compile.split(",") if m.strip()]
    for mode, preset in [(m, p) for m in modes for p in presets]:
        mid = int(round(chunks_ms[len(chunks_ms) // 2] * sr / 1000))
        gflop = _gflop_per_audio_second(model, preset, x_flops, mid)
        shapes = _shape_bound(model, preset, x_flops, mid) if mode == "eager" else None
        for ms in chunks_ms:
            chunk = int(round(ms * sr / 1000))
            parts = (
                _PartTimer()
                if (preset == args.long_preset and ms == chunks_ms[len(chunks_ms) // 2] and mode == "eager")
                else None
            )
            times, total, out, enc, dec = _loopback(model, preset, x, chunk, parts, mode)
            if out != -(-x.shape[0] // 320) * 320:
                raise RuntimeError(f"{preset}: {out} samples out for {x.shape[0]} in")
            rtf = total / seconds
            chunk_s = chunk / sr
            rows.append(
                [
                    preset if mode == "eager" else f"{preset} ({mode})",
                    f"{ms:g}",
                    f"{enc.latency_ms + dec.latency_ms:.0f}",
                    f"{rtf:.2f}",
                    f"{rtf / (offline / seconds):.2f}",
                    f"{1000 * np.percentile(times, 50):.1f}",
                    f"{1000 * np.percentile(times, 99):.1f}",
                    "yes" if np.percentile(times, 99) <= chunk_s and rtf < 1 else "no",
                    f"{gflop:.1f}",
                    f"{gflop / peak:.2f}",
                    f"{_weight_gb_per_audio_second(model, enc, dec) / read:.2f}",
                    "-" if shapes is None else f"{shapes:.2f}",
                ]
            )
            print(" | ".join(rows[-1]), file=sys.stderr)
            if parts is not None:
                breakdown = (preset, ms, parts.totals, total)
    long_rows = _long_stream(model, args) if args.long_minutes > 0 else []
    table = markdown_table(
        [
            "preset",
            "chunk ms",
            "algorithmic latency ms",
            "RTF",
            "x offline",
            "step p50 ms",
            "step p99 ms",
            "real time",
            "GFLOP per audio s",
            "RTF bound",
            "RTF bound (weights)",
            "RTF at op shapes",
        ],
        rows,
    )
    print(table)
    print(f"fp32 matmul here: {peak:.0f} GFLOP/s, memory read {read:.1f} GB/s", file=sys.stderr)
    if args.output:
        _write(args, table, long_rows, breakdown, seconds, peak, read)
    return 0


def _long_stream(model, args: argparse.Namespace) -> list[list[object]]:
    """Per-step time around minute 1 and around the end of a long stream (same preset, same chunk)."""
    sr = model.sample_rate
    chunk = int(round(args.long_chunk_ms * sr / 1000))
    total_steps = int(args.long_minutes * 60 * sr / chunk)
    piece = _signal(20.0, seed=2)  # looped: a long stream of speech-like audio
    enc = model.streaming_encoder(latency=args.long_preset)
    dec = model.streaming_decoder(latency=args.long_preset)
    window = max(20, min(int(5 * sr / chunk), total_steps // 4))  # ~5 s of steps
    first = min(int(60 * sr / chunk), total_steps // 2)  # minute 1 (or half-way through a short stream)

    def at(step: int) -> str:
        seconds = int(step * chunk / sr)
        return f"at {seconds // 60}:{seconds % 60:02d}"

    marks = {at(first): first, at(total_steps - window): total_steps - window}
    samples: dict[str, list[float]] = {k: [] for k in marks}
    state_bytes = {}
    pos = 0
    for step in range(total_steps):
        if pos + chunk > piece.shape[0]:
            pos = 0
        t0 = time.perf_counter()
        dec.step(enc.step(piece[None, pos : pos + chunk]))
        dt = time.perf_counter() - t0
        pos += chunk
        for label, start in marks.items():
            if start <= step < start + window:
                samples[label].append(dt)
                state_bytes[label] = enc.state_bytes() + dec.state_bytes()
        if step % max(1, total_steps // 20) == 0:
            print(f"long stream: step {step}/{total_steps}", file=sys.stderr)
    return [
        [
            label,
            f"{1000 * np.percentile(v, 50):.1f}",
            f"{1000 * np.percentile(v, 99):.1f}",
            f"{state_bytes[label] / 2**20:.2f}",
        ]
        for label, v in samples.items()
        if v
    ]


def _write(args, table: str, long_rows, breakdown, seconds: float, peak: float, read: float) -> None:
    command = (
        "xcodec-stream " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        if "stream" in sys.argv
        else (f"xcodec-stream bench stream --model {args.model} --threads {args.threads}")
    )
    lines = [
        f"## Streaming loopback, one stream ({args.model}, {args.device})",
        "",
        f"- Machine: {machine()}",
        f"- Date: {today()}",
        f"- Command: `{command}`",
        f"- {seconds:.1f} s of speech-like audio; each step = one chunk through the streaming encoder, its codes "
        "through the streaming decoder. RTF = compute time / audio time; `x offline` = RTF / the offline model's "
        "RTF (whole-signal encode + decode, same audio, same run). Real time = RTF < 1 and step p99 <= chunk.",
        f"- GFLOP per audio s: matmul, conv and attention FLOPs (torch's FLOP counter; the middle chunk size for "
        f"each preset). RTF bound = GFLOP per audio s / {peak:.0f} GFLOP/s, the fp32 matmul throughput measured "
        "in the same run: the RTF the model would have if every FLOP ran at matmul speed. RTF bound (weights) = "
        f"GB of weights one stream's steps read per audio second (every step reads every weight of its engine "
        f"once) / {read:.1f} GB/s, the memory read bandwidth measured in the same run: the floor for one stream "
        "whatever the arithmetic; several sessions in one step share it. RTF at op shapes = every matmul, conv "
        "and attention call of the run (recorded with its shapes on 2 s of audio, middle chunk size), each timed "
        "alone at its own shapes (`bench/op_shapes.py`): what these thin products cost by themselves, where the "
        "FLOP bound assumes large-matmul speed; RTF minus it is elementwise work, copies and Python.",
        "- Steps are static (encoder and decoder each move by their preset's step, e.g. 80 ms at `balanced`): "
        "a chunk shorter than a step only waits in the buffer, so `step p50` is near 0 for 20 ms chunks and "
        "`step p99` is the time of a whole step.",
        "",
        table,
    ]
    if breakdown is not None:
        preset, ms, totals, total = breakdown
        enc_all = totals.get("encoder (all)", 0.0)
        acoustic = totals.get("acoustic encoder", 0.0)
        semantic = totals.get("semantic model windows", 0.0)
        parts = [
            ["acoustic encoder (committed + speculative runs)", f"{100 * acoustic / total:.0f}"],
            [
                "semantic transformer (HuBERT/WavLM; windows, or new frames with the cache)",
                f"{100 * semantic / total:.0f}",
            ],
            [
                "rest of the encoder (conv features, semantic encoder, VQ)",
                f"{100 * (enc_all - acoustic - semantic) / total:.0f}",
            ],
            ["decoder (committed + speculative runs)", f"{100 * totals.get('decoder', 0.0) / total:.0f}"],
        ]
        lines += [
            "",
            f"Where the time goes (`{preset}`, {ms:g} ms chunks), % of loopback time:",
            "",
            markdown_table(["part", "%"], parts),
        ]
    if long_rows:
        lines += [
            "",
            f"Long stream (`{args.long_preset}`, {args.long_chunk_ms:g} ms chunks, {args.long_minutes:g} min): step time "
            "over ~5 s of steps at each point, and the per-session state held by encoder + decoder.",
            "",
            markdown_table(["where", "step p50 ms", "step p99 ms", "state MiB"], long_rows),
        ]
    # one section per model and device, so a tiny-model or GPU run does not replace the full-model CPU table
    name = (
        "stream"
        if (args.model, args.device) == ("random:full", "cpu")
        else f"stream-{args.model}-{args.device}"
    )
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
    path = write_section(name, "\n".join(lines), args.output)
    print(f"wrote section '{name}' of {path}", file=sys.stderr)
