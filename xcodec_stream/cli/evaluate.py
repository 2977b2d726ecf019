"""`xcodec-stream eval`: fidelity of the streaming engine against offline, per preset; writes docs/STREAMING.md.
`eval --quality`: speech quality (PESQ-WB, STOI) of offline and streamed decoding and of Opus; docs/QUALITY.md."""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shlex
import sys
from pathlib import Path

from xcodec_stream.cli.audio_file import read_audio
from xcodec_stream.cli.encode import add_model_arguments, load_model, resample

DEFAULT_CLIPS = "tests/data/*.wav"
BEGIN, END = "<!-- eval:begin -->", "<!-- eval:end -->"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure streaming fidelity vs offline per latency preset (or, with --quality, PESQ-WB/STOI "
        "against the input and Opus); writes a docs section and a plot",
        description="Streams each clip through the streaming encoder and decoder for every preset (and a sweep "
        "of custom options) and compares with offline encode/decode of the same whole signal: code agreement "
        "per quantizer, SNR of the streamed decode, decode-only SNR, algorithmic latency. With --quality: "
        "PESQ-WB and STOI of the decoded audio against the input, offline and per preset, at every bandwidth "
        "of the model, next to Opus at 4, 6 and 8 kbps.",
    )
    add_model_arguments(p, default="random:full")
    p.add_argument(
        "--clips",
        nargs="+",
        default=[DEFAULT_CLIPS],
        help=f"audio files or glob patterns (any rate; resampled to 16 kHz, downmixed). Default: {DEFAULT_CLIPS}",
    )
    p.add_argument(
        "--out",
        type=Path,
        nargs="+",
        default=None,
        help="markdown file to update, section between eval markers (default: docs/STREAMING.md; "
        "with --quality, between quality markers of docs/QUALITY.md; with --quality several files may be "
        "given: the same section goes into each, e.g. a model card and docs/STREAMING.md)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        default=None,
        help="PNG of fidelity vs latency (default: streaming_fidelity.png next to --out; with --quality, "
        "PESQ/STOI vs bitrate, quality.png next to --out)",
    )
    p.add_argument(
        "--quality",
        action="store_true",
        help="measure speech quality (PESQ-WB, STOI) against the input instead of fidelity to offline",
    )
    p.add_argument(
        "--bandwidths",
        default=None,
        help="with --quality: comma-separated kbps, among the model's (default: all of the model's)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="with --quality: JSON of every number, per clip too (default: quality.json next to --out)",
    )
    p.add_argument(
        "--presets", default="exact,balanced,low", help="comma-separated presets to measure (default: all)"
    )
    p.add_argument(
        "--no-sweep", action="store_true", help="measure the presets only, not the custom-option sweep"
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _clip_paths(patterns: list[str]) -> list[Path]:
    paths: list[Path] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matched:
            raise FileNotFoundError(f"no clip matches {pattern!r}")
        paths.extend(Path(m) for m in matched)
    return paths


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from xcodec_stream.bench.report import machine, today
    from xcodec_stream.streaming.fidelity import measure, offline_reference, sweep
    from xcodec_stream.streaming.presets import PRESETS

    if args.threads:
        torch.set_num_threads(args.threads)
    presets = _presets(args.presets)
    paths = _clip_paths(args.clips)
    if args.quality:
        return _run_quality(args, presets, paths)
    if args.out and len(args.out) > 1:
        raise ValueError("--out takes one file without --quality")
    args.out = args.out[0] if args.out else Path("docs/STREAMING.md")
    configs = [(name, PRESETS[name]) for name in presets] + ([] if args.no_sweep else sweep())
    model = load_model(args.model, args.device, args.dtype)
    rate = model.config.sample_rate
    clips = _read_clips(paths, rate)
    results = []
    with tqdm(
        total=len(paths) * (1 + len(configs)), desc="eval", unit="clip", disable=args.quiet, file=sys.stderr
    ) as bar:
        bar.set_postfix_str("offline")
        refs = []
        for clip in clips:
            refs.append(offline_reference(model, clip))
            bar.update(1)
        for label, options in configs:
            bar.set_postfix_str(label)
            results.append(measure(model, refs, options, label, progress=bar))
    plot = args.plot or args.out.with_name("streaming_fidelity.png")
    seconds = sum(c.shape[0] for c in clips) / rate
    section = _section(
        results, presets, str(args.model), paths, seconds, plot, args.out, _command(args), machine(), today()
    )
    _write_section(args.out, section)
    _plot(results, presets, plot, str(args.model))
    print(_table(results, presets))
    print(f"wrote {args.out} and {plot}", file=sys.stderr)
    return 0


def _presets(spec: str) -> list[str]:
    from xcodec_stream.streaming.presets import PRESETS

    presets = [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise ValueError(f"unknown preset(s) {', '.join(unknown)}; known: {', '.join(PRESETS)}")
    return presets


def _read_clips(paths: list[Path], rate: int) -> list:
    """Each clip as a float32 tensor at `rate`, mono."""
    import torch

    clips = []
    for path in paths:
        wave, sr, _ = read_audio(path)
        clips.append(resample(wave, sr, rate).to(torch.float32))
    return clips


def _command(args: argparse.Namespace) -> str:
    """The command that reproduces the numbers (as run, less where it wrote)."""
    if sys.argv[1:2] == ["eval"]:
        return "xcodec-stream " + " ".join(shlex.quote(a) for a in _without_outputs(sys.argv[1:]))
    return f"xcodec-stream eval {'--quality ' if args.quality else ''}--model {args.model}"


def _run_quality(args: argparse.Namespace, presets: list[str], paths: list[Path]) -> int:
    from tqdm import tqdm

    from xcodec_stream.bench.report import machine, replace_between, today
    from xcodec_stream.evaluation import opus, quality
    from xcodec_stream.evaluation.plot import plot

    outs = args.out or [Path("docs/QUALITY.md")]
    out = outs[0]
    plot_path = args.plot or out.with_name("quality.png")
    json_path = args.json or out.with_name("quality.json")
    model = load_model(args.model, args.device, args.dtype)
    bandwidths = list(model.config.target_bandwidths)
    if args.bandwidths:
        wanted = [float(b) for b in args.bandwidths.split(",") if b.strip()]
        unknown = [f"{b:g}" for b in wanted if b not in bandwidths]
        if unknown:
            known = ", ".join(f"{b:g}" for b in bandwidths)
            raise ValueError(f"bandwidth(s) {', '.join(unknown)} kbps not in the model's ({known})")
        bandwidths = wanted
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        raise ValueError("clips are reported by file name: two clips have the same name")
    clips = dict(zip(names, _read_clips(paths, model.config.sample_rate), strict=True))
    per_clip = 1 + len(presets) + (opus.unavailable() is None)
    with tqdm(
        total=len(clips) * per_clip, desc="quality", unit="run", disable=args.quiet, file=sys.stderr
    ) as bar:
        result = quality.evaluate(model, clips, bandwidths, presets, progress=bar)
    command, machine_line, date = _command(args), machine(), today()
    for path in outs:
        body = quality.section(
            result, str(args.model), command, machine_line, date, _relative(plot_path, path)
        )
        replace_between(path, quality.BEGIN, quality.END, body, "# Speech quality\n")
    plot(result, plot_path, str(args.model))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    record = quality.record(result, str(args.model), command, machine_line, date)
    json_path.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    print("PESQ-WB\n" + quality.table(result, "pesq") + "\n\nSTOI\n" + quality.table(result, "stoi"))
    print(quality.opus_note(result))
    print(f"wrote {', '.join(map(str, outs))}, {plot_path} and {json_path}", file=sys.stderr)
    return 0


def _fmt_db(x: float) -> str:
    return "exact" if math.isinf(x) else f"{x:.1f}"


def _table(results: list, presets: list[str]) -> str:
    from xcodec_stream.bench.report import markdown_table

    n_q = len(results[0].agreement) if results else 0
    headers = [
        "setting",
        "enc ms",
        "dec ms",
        "total ms",
        *[f"q{i + 1} %" for i in range(n_q)],
        "SNR dB",
        "decode SNR dB",
        "semantic cost",
    ]
    rows = []
    for r in results:
        name = f"**{r.label}**" if r.label in presets else r.label
        rows.append(
            [
                name,
                f"{r.encoder_ms:.0f}",
                f"{r.decoder_ms:.0f}",
                f"{r.latency_ms:.0f}",
                *[f"{a:.1f}" for a in r.agreement],
                _fmt_db(r.snr_db),
                _fmt_db(r.decode_snr_db),
                f"{r.semantic_cost:.1f}x",
            ]
        )
    return markdown_table(headers, rows)


def _section(
    results, presets, model_id, paths, seconds, plot: Path, out: Path, command, machine_line, date
) -> str:
    proxy = model_id.startswith("random:")
    title = "Measured fidelity" + (" (random-weight proxy)" if proxy else "")
    lines = [f"## {title}", ""]
    if proxy:
        lines += [
            f"> **Random-weight proxy.** These numbers come from `{model_id}`: random weights with the real "
            "architecture, calibrated so that codes vary and both branches matter. They show where streaming "
            "departs from offline and how the departure shrinks with latency; they do not predict the values "
            "for a trained checkpoint. Re-run the command below with `--model` set to a checkpoint for those.",
            "",
        ]
    clips = ", ".join(f"`{p.name}`" for p in paths)
    lines += [
        f"Model `{model_id}`; clips {clips} ({seconds:.1f} s in all); {date}; {machine_line}.",
        "",
        f"Command: `{command}`",
        "",
        "Columns: latency of encoder + decoder (definition above); `qN %`: frames whose code of quantizer N "
        "equals offline encode of the whole signal; `SNR dB`: streamed encode then streamed decode against "
        "offline encode then decode; `decode SNR dB`: streamed decode of the offline codes against offline "
        "decode (decoder only; `exact` = bit-for-bit within float32 rounding, measured >= 100 dB); "
        "`semantic cost`: semantic-transformer query frames per audio frame (offline: 1x; `kv` = key/value cache). Presets in bold, the "
        "others are the sweep of custom options plotted below. Each clip is streamed as one chunk: the tests "
        "show that codes do not depend on chunking.",
        "",
        _table(results, presets),
        "",
        f"![fidelity against latency]({_relative(plot, out)})",
    ]
    return "\n".join(lines)


def _relative(path: Path, doc: Path) -> str:
    """`path` as a link from `doc` (`../` where needed): docs stay valid wherever the repository is."""
    return os.path.relpath(path.resolve(), doc.resolve().parent)


def _without_outputs(argv: list[str]) -> list[str]:
    """The command as run, less where it wrote (--out / --plot / --json): what reproduces the numbers."""
    out, skip = [], 0  # values still to drop: --out takes several
    for a in argv:
        if skip and not a.startswith("--"):
            skip -= 1
            continue
        skip = 0
        if a in ("--out", "--plot", "--json"):
            skip = len(argv) if a == "--out" else 1
        elif not a.startswith(("--out=", "--plot=", "--json=")):
            out.append(a)
    return out


def _write_section(path: Path, body: str) -> None:
    from xcodec_stream.bench.report import replace_between

    replace_between(path, BEGIN, END, body, "# Streaming\n")


def _plot(results: list, presets: list[str], path: Path, model_id: str) -> None:
    from xcodec_stream.bench.report import proxy_note, pyplot, save_figure

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    cap = 100.0  # dB shown for "exact"
    for r in results:
        is_preset = r.label in presets
        style = dict(marker="*" if is_preset else "o", s=160 if is_preset else 40, zorder=3)
        color = "tab:red" if is_preset else "tab:blue"
        ax1.scatter(r.latency_ms, min(r.snr_db, cap), color=color, **style)
        ax2.scatter(r.latency_ms, r.agreement[0], color=color, **style)
        if is_preset:
            ax1.annotate(
                r.label, (r.latency_ms, min(r.snr_db, cap)), textcoords="offset points", xytext=(6, 4)
            )
            ax2.annotate(r.label, (r.latency_ms, r.agreement[0]), textcoords="offset points", xytext=(6, 4))
    sweep = sorted((r for r in results if r.label not in presets), key=lambda r: r.latency_ms)
    if sweep:
        ax1.plot(
            [r.latency_ms for r in sweep], [min(r.snr_db, cap) for r in sweep], color="tab:blue", alpha=0.5
        )
        ax2.plot([r.latency_ms for r in sweep], [r.agreement[0] for r in sweep], color="tab:blue", alpha=0.5)
    ax1.set(
        xlabel="algorithmic latency, encoder + decoder (ms)",
        ylabel="SNR vs offline (dB)",
        title="Streamed audio",
    )
    ax2.set(
        xlabel="algorithmic latency, encoder + decoder (ms)",
        ylabel="agreement with offline (%)",
        title="Codes, quantizer 1",
    )
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    save_figure(fig, path, f"Streaming fidelity against latency, {model_id}{proxy_note(model_id)}")
