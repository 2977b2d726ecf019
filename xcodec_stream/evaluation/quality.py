"""Speech quality of the decoded audio against the input: PESQ-WB and STOI per mode (offline, streamed per
latency preset, Opus) and bitrate, averaged over clips; markdown tables and the JSON record."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from xcodec_stream.evaluation import opus

RATE = 16000  # PESQ-WB and our STOI settings are defined at 16 kHz, the model's rate
OPUS_KBPS = (4.0, 6.0, 8.0)  # always measured; the model's bandwidths are added where Opus delivers them
OFFLINE = "offline"
OPUS = "Opus"
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"


def require() -> None:
    """A one-line error instead of an ImportError deep in the run: the metrics come with the test extras."""
    import importlib.util

    missing = [m for m in ("pesq", "pystoi") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"the quality metrics need {' and '.join(missing)}: pip install -e '.[test]'")


def pesq_wb(reference: np.ndarray, degraded: np.ndarray) -> float:
    """PESQ-WB (ITU-T P.862.2 MOS-LQO, about 1.04 to 4.64); NaN where PESQ cannot score (e.g. silence)."""
    from pesq import pesq

    try:
        # float64: the C code gets NaN from some float32 inputs
        return float(pesq(RATE, reference.astype(np.float64), degraded.astype(np.float64), "wb"))
    except (ValueError, RuntimeError):  # PesqError is a RuntimeError; silence raises a ValueError
        return math.nan


def stoi(reference: np.ndarray, degraded: np.ndarray) -> float:
    """Short-time objective intelligibility (Taal et al. 2011, not the extended one), about 0 to 1."""
    from pystoi import stoi as _stoi

    return float(_stoi(reference.astype(np.float64), degraded.astype(np.float64), RATE, extended=False))


@dataclass
class Score:
    """One mode at one bitrate, per clip (in clip order)."""

    mode: str
    kbps: float  # the bandwidth asked for
    pesq: list[float] = field(default_factory=list)
    stoi: list[float] = field(default_factory=list)
    sent_kbps: list[float] = field(default_factory=list)  # Opus only: what the encoder sent

    def add(self, reference: np.ndarray, degraded: np.ndarray) -> None:
        self.pesq.append(pesq_wb(reference, degraded))
        self.stoi.append(stoi(reference, degraded))

    @property
    def mean_pesq(self) -> float:
        return float(np.mean(self.pesq)) if self.pesq else math.nan

    @property
    def mean_stoi(self) -> float:
        return float(np.mean(self.stoi)) if self.stoi else math.nan

    @property
    def mean_sent_kbps(self) -> float:
        return float(np.mean(self.sent_kbps)) if self.sent_kbps else math.nan


@dataclass
class Quality:
    clips: list[str]
    seconds: list[float]
    bandwidths: list[float]
    presets: list[str]
    scores: list[Score]  # codec modes, then Opus at every bitrate tried
    opus_shown: list[float]  # the Opus bitrates reported (the others: see opus_note)
    opus_reason: str | None = None  # why there is no Opus column, if there is none
    opus_version: str | None = None
    opus_lookahead: int | None = None

    @property
    def modes(self) -> list[str]:
        return [OFFLINE, *self.presets]

    def score(self, mode: str, kbps: float) -> Score | None:
        return next((s for s in self.scores if s.mode == mode and s.kbps == kbps), None)

    def opus_dropped(self) -> list[Score]:
        return [s for s in self.scores if s.mode == OPUS and s.kbps not in self.opus_shown]


def codec_outputs(model: torch.nn.Module, clip: torch.Tensor, bandwidths: Sequence[float], mode: str):
    """Yield (kbps, decoded (n,) float32) of `clip` at every bandwidth, offline or streamed with a preset.

    One encode at the highest bandwidth: residual VQ's first n_q codes are the codes at the bandwidth of
    n_q quantizers (tested), so slicing gives every bandwidth."""
    from xcodec_stream.streaming.fidelity import offline_reference, stream_decode, stream_encode
    from xcodec_stream.streaming.presets import PRESETS

    n = clip.shape[-1]
    device = next(model.parameters()).device
    if mode == OFFLINE:
        codes = offline_reference(model, clip).codes
    else:
        codes = stream_encode(model, clip, PRESETS[mode])
    for kbps in bandwidths:
        part = codes[: model.num_quantizers_for_bandwidth(kbps)]
        if mode == OFFLINE:
            audio = model.decode(part[None].to(device)).audio_values[0, 0]
        else:
            # the streamed decode is on the offline time axis (320 samples per frame from sample 0), as
            # `eval` compares it: nothing to shift, only the frame padding to crop
            audio = stream_decode(model, part, PRESETS[mode])
        yield kbps, audio[:n].float().cpu().numpy()


def opus_kbps(bandwidths: Sequence[float]) -> list[float]:
    return sorted({*OPUS_KBPS, *(float(b) for b in bandwidths)})


def evaluate(
    model: torch.nn.Module,
    clips: dict[str, torch.Tensor],
    bandwidths: Sequence[float],
    presets: Sequence[str],
    progress=None,
) -> Quality:
    """Score every clip (16 kHz mono float32) in every mode and bandwidth, and Opus; `progress.update(1)`
    after each (clip, mode), Opus counting as one mode."""
    require()
    if model.config.sample_rate != RATE:
        raise ValueError(f"PESQ-WB needs {RATE} Hz audio; the model runs at {model.config.sample_rate} Hz")
    reason = opus.unavailable()
    scores = {(m, float(b)): Score(m, float(b)) for m in [OFFLINE, *presets] for b in bandwidths}
    if reason is None:
        scores.update({(OPUS, k): Score(OPUS, k) for k in opus_kbps(bandwidths)})
    silent: set[float] = set()
    lookahead = None
    with torch.inference_mode():
        for clip in clips.values():
            reference = clip.numpy()
            for mode in [OFFLINE, *presets]:
                for kbps, audio in codec_outputs(model, clip, bandwidths, mode):
                    scores[mode, float(kbps)].add(reference, audio)
                if progress is not None:
                    progress.update(1)
            if reason is None:
                for kbps in opus_kbps(bandwidths):
                    result = opus.round_trip(reference, kbps)
                    lookahead = result.lookahead
                    if not result.audio.any():
                        silent.add(kbps)
                    scores[OPUS, kbps].add(reference, result.audio)
                    scores[OPUS, kbps].sent_kbps.append(result.kbps)
                if progress is not None:
                    progress.update(1)
    shown = []
    if reason is None:
        for kbps in opus_kbps(bandwidths):
            sent = scores[OPUS, kbps].mean_sent_kbps
            # below its floor Opus sends more than asked (or silence): not a point at that bitrate
            if kbps in OPUS_KBPS or (kbps not in silent and abs(sent - kbps) <= 0.25 * kbps):
                shown.append(kbps)
    return Quality(
        clips=list(clips),
        seconds=[c.shape[-1] / RATE for c in clips.values()],
        bandwidths=[float(b) for b in bandwidths],
        presets=list(presets),
        scores=list(scores.values()),
        opus_shown=shown,
        opus_reason=reason,
        opus_version=opus.version() if reason is None else None,
        opus_lookahead=lookahead,
    )


def _kbps(k: float) -> str:
    return f"{k:g} kbps"


def table(quality: Quality, metric: str) -> str:
    """Rows: offline, each preset, Opus; columns: bitrate (model bandwidths and Opus bitrates)."""
    from xcodec_stream.bench.report import markdown_table

    columns = sorted({*quality.bandwidths, *quality.opus_shown})
    digits = 2 if metric == "pesq" else 3

    def cell(s: Score | None) -> str:
        if s is None:
            return "—"
        v = s.mean_pesq if metric == "pesq" else s.mean_stoi
        return "n/a" if math.isnan(v) else f"{v:.{digits}f}"

    rows = [
        [m if m == OFFLINE else f"`{m}`", *[cell(quality.score(m, k)) for k in columns]]
        for m in quality.modes
    ]
    if quality.opus_reason is None:
        rows.append(
            [OPUS, *[cell(quality.score(OPUS, k) if k in quality.opus_shown else None) for k in columns]]
        )
    else:
        rows.append([OPUS, *["n/a"] * len(columns)])
    return markdown_table(["mode", *[_kbps(k) for k in columns]], rows)


def opus_note(quality: Quality) -> str:
    if quality.opus_reason is not None:
        return f"Opus: n/a, {quality.opus_reason}."
    sent = ", ".join(
        f"{s.mean_sent_kbps:.1f} for {s.kbps:g}"
        for s in quality.scores
        if s.mode == OPUS and s.kbps in quality.opus_shown
    )
    note = (
        f"Opus: {quality.opus_version} through opuslib, 16 kHz mono, VOIP application, 20 ms packets, "
        f"default VBR and complexity; its {quality.opus_lookahead}-sample lookahead is removed before scoring. "
        f"Kbps it sent on average (packet bytes over the duration): {sent}."
    )
    dropped = quality.opus_dropped()
    if dropped:
        what = ", ".join(
            f"{s.kbps:g} ({'silence' if not any(math.isfinite(p) for p in s.pesq) else f'sent {s.mean_sent_kbps:.1f}'})"
            for s in dropped
        )
        note += f" Not shown, because Opus does not run at that rate: {what}."
    return note


def section(
    quality: Quality, model_id: str, command: str, machine_line: str, date: str, plot_link: str
) -> str:
    proxy = model_id.startswith("random:")
    lines = [f"## Speech quality{' (random-weight proxy)' if proxy else ''}", ""]
    if proxy:
        lines += [
            f"> **Random-weight proxy.** `{model_id}` has random weights: its decoded audio is not speech, so "
            "these numbers only show that the evaluation runs. Re-run the command with `--model` set to a "
            "trained checkpoint.",
            "",
        ]
    clips = ", ".join(f"`{c}`" for c in quality.clips)
    lines += [
        f"Model `{model_id}`; clips {clips} ({sum(quality.seconds):.1f} s in all); {date}; {machine_line}.",
        "",
        f"Command: `{command}`",
        "",
        "Decoded audio scored against the input, mean over clips. Rows: `offline` = encode and decode of the "
        "whole clip; a preset = the clip streamed through the streaming encoder and decoder with that latency "
        "preset (compared on the offline time axis, as the fidelity section of docs/STREAMING.md does); Opus "
        "as a reference codec. Columns: bitrate asked for (the model's bandwidths; Opus bitrates). "
        "`—`: not measured at that rate.",
        "",
        "**PESQ-WB** (ITU-T P.862.2, MOS-LQO from about 1.04 to 4.64; higher is better):",
        "",
        table(quality, "pesq"),
        "",
        "**STOI** (short-time objective intelligibility, 0 to 1; higher is better):",
        "",
        table(quality, "stoi"),
        "",
        opus_note(quality),
        "",
        f"![PESQ-WB and STOI against bitrate]({plot_link})",
    ]
    return "\n".join(lines)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def record(quality: Quality, model_id: str, command: str, machine_line: str, date: str) -> dict:
    """Everything measured, per clip and averaged, for the JSON file (NaN written as null)."""
    return {
        "model": model_id,
        "date": date,
        "machine": machine_line,
        "command": command,
        "sample_rate": RATE,
        "clips": [{"name": c, "seconds": s} for c, s in zip(quality.clips, quality.seconds, strict=True)],
        "bandwidths_kbps": quality.bandwidths,
        "presets": quality.presets,
        "opus": {
            "available": quality.opus_reason is None,
            "reason": quality.opus_reason,
            "libopus": quality.opus_version,
            "lookahead_samples": quality.opus_lookahead,
            "shown_kbps": quality.opus_shown,
        },
        "results": [
            {
                "mode": s.mode,
                "kbps": s.kbps,
                "pesq_wb": _finite(s.mean_pesq),
                "stoi": _finite(s.mean_stoi),
                **({"sent_kbps": _finite(s.mean_sent_kbps)} if s.sent_kbps else {}),
                "per_clip": {
                    c: {"pesq_wb": _finite(p), "stoi": _finite(t)}
                    | ({"sent_kbps": s.sent_kbps[i]} if s.sent_kbps else {})
                    for i, (c, p, t) in enumerate(zip(quality.clips, s.pesq, s.stoi, strict=True))
                },
            }
            for s in quality.scores
        ],
    }
