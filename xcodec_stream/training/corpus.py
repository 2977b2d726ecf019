"""Build a varied synthetic speech corpus: plan utterances from a seed, synthesise them in parallel, write
16 kHz mono PCM16 files with a manifest and a licence summary.

The plan is a deterministic stream: each engine draws its own utterances from its own seeded generator and the
engine with the fewest estimated seconds goes next, so a shorter corpus is a prefix of a longer one and every
file name (index, engine, voice and a digest of its settings) is the same on every run.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import random
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from xcodec_stream.training.corpus_text import TextSource, available_texts
from xcodec_stream.training.corpus_voices import Voice, espeak_variants, find_voices, synthesise

SAMPLE_RATE = 16000
EDGE_SILENCE_S = 0.1
# Characters per second of each engine at its default rate (measured on a 90-minute build): only to plan the
# minutes, the files are measured.
CHARS_PER_SECOND = {"espeak-ng": 17.8, "festival": 15.5, "flite": 17.4}
ESPEAK_DEFAULT_WPM = 175


@dataclass(frozen=True)
class Utterance:
    index: int
    engine: str
    voice: str
    language: str
    variant: str  # espeak-ng voice variant; "" otherwise
    rate: float  # espeak-ng words/min; flite/festival duration stretch
    pitch: float  # espeak-ng -p; flite f0 target mean (Hz); festival: resample shift in semitones
    peak_dbfs: float
    text: str

    @property
    def path(self) -> str:
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{self.voice}-{self.variant}".strip("-")).strip("-")
        return f"{self.index:05d}-{self.engine}-{slug}-{digest}.wav"

    def estimated_seconds(self) -> float:
        speed = self.rate / ESPEAK_DEFAULT_WPM if self.engine == "espeak-ng" else 1.0 / self.rate
        if self.engine == "festival":
            speed *= 2 ** (self.pitch / 12)
        return len(self.text) / (CHARS_PER_SECOND[self.engine] * speed) + 2 * EDGE_SILENCE_S


class _EngineStream:
    """One engine's endless, seeded sequence of (voice, settings, sentence) draws."""

    def __init__(self, engine: str, voices: list[Voice], texts: dict, seed: int, variants: list[str]):
        self.engine = engine
        self.rng = random.Random(f"{seed}-{engine}")
        self.voices = voices
        self.variants = variants
        # Languages take turns so small ones are not drowned by English; voices take turns within one.
        self.languages = sorted({v.language for v in voices})
        self.turn = 0
        self.voice_turn = {lang: 0 for lang in self.languages}
        self.sentences = {}
        for lang in self.languages:
            order = list(texts[lang][1])
            random.Random(f"{seed}-{engine}-{lang}-text").shuffle(order)
            self.sentences[lang] = order
        self.next_sentence = {lang: 0 for lang in self.languages}

    def draw(self, index: int) -> Utterance:
        lang = self.languages[self.turn % len(self.languages)]
        self.turn += 1
        candidates = [v for v in self.voices if v.language == lang]
        voice = candidates[self.voice_turn[lang] % len(candidates)]
        self.voice_turn[lang] += 1
        sentences = self.sentences[lang]
        text = sentences[self.next_sentence[lang] % len(sentences)]
        self.next_sentence[lang] += 1
        rng = self.rng
        variant = ""
        if self.engine == "espeak-ng":
            variant = rng.choice(self.variants)
            rate, pitch = float(rng.randint(130, 220)), float(rng.randint(20, 80))
        elif self.engine == "flite":
            rate = round(rng.uniform(0.8, 1.3), 3)
            # Around each voice's own register (slt is the only female flite voice).
            base = 175.0 if voice.name == "slt" else 110.0
            pitch = float(round(base * rng.uniform(0.8, 1.25)))
        else:
            rate = round(rng.uniform(0.85, 1.25), 3)
            pitch = round(rng.uniform(-2.5, 2.5), 2)
        peak = round(rng.uniform(-14.0, -2.0), 1)
        return Utterance(index, self.engine, voice.name, lang, variant, rate, pitch, peak, text)


def plan(voices: dict[str, list[Voice]], texts: dict, minutes: float, seed: int) -> list[Utterance]:
    """Utterances adding up to about `minutes`, a third per engine (or an equal share of those installed)."""
    variants = espeak_variants() if "espeak-ng" in voices else [""]
    streams = [_EngineStream(e, voices[e], texts, seed, variants) for e in sorted(voices)]
    seconds = {s.engine: 0.0 for s in streams}
    out: list[Utterance] = []
    while sum(seconds.values()) < minutes * 60:
        stream = min(streams, key=lambda s: (seconds[s.engine], s.engine))
        utt = stream.draw(len(out))
        seconds[stream.engine] += utt.estimated_seconds()
        out.append(utt)
    return out


def _resample(audio: np.ndarray, orig: int, new: int) -> np.ndarray:
    if orig == new:
        return audio
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), orig, new).numpy()


def trim(audio: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Cut leading/trailing silence down to EDGE_SILENCE_S (frames 40 dB under the loudest count as silence)."""
    hop = rate // 100
    frames = len(audio) // hop
    if frames == 0:
        return audio
    rms = np.sqrt((audio[: frames * hop].reshape(frames, hop) ** 2).mean(axis=1))
    active = np.nonzero(rms > max(rms.max() * 0.01, 1e-4))[0]
    if len(active) == 0:
        return audio[:0]
    pad = int(EDGE_SILENCE_S * rate)
    return audio[max(0, active[0] * hop - pad) : min(len(audio), (active[-1] + 1) * hop + pad)]


def render(utt: Utterance, voice: Voice, workdir: Path) -> np.ndarray:
    """The utterance's final 16 kHz waveform: synthesised, resampled, pitch-shifted, trimmed, levelled."""
    audio, rate = synthesise(voice, utt.text, utt.variant, utt.rate, utt.pitch, workdir)
    audio = _resample(audio, rate, SAMPLE_RATE)
    if utt.engine == "festival" and utt.pitch:
        # Reading the samples at a shifted rate moves pitch and formants together: another vocal tract
        # size, which festival's voices cannot otherwise vary. A multiple of 40 Hz keeps the filter small.
        shifted = int(round(SAMPLE_RATE * 2 ** (utt.pitch / 12) / 40) * 40)
        audio = _resample(audio, shifted, SAMPLE_RATE)
    audio = trim(audio)
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak > 0:
        audio = audio * (10 ** (utt.peak_dbfs / 20) / peak)
    return audio.astype(np.float32)


_worker_dir: tempfile.TemporaryDirectory | None = None


def _init_worker() -> None:
    global _worker_dir
    import torch

    torch.set_num_threads(1)  # the parallelism is across utterances
    _worker_dir = tempfile.TemporaryDirectory(prefix="xcodec-corpus-")


def _build_one(job: tuple[Utterance, Voice, str]) -> tuple[int, float | None, str]:
    utt, voice, out_dir = job
    target = Path(out_dir) / utt.path
    try:
        assert _worker_dir is not None
        audio = render(utt, voice, Path(_worker_dir.name))
    except Exception as exc:  # noqa: BLE001 - one failing utterance must not stop the corpus
        return utt.index, None, f"{utt.path}: {type(exc).__name__}: {exc}"[:300]
    if len(audio) < SAMPLE_RATE // 4:
        return utt.index, None, f"{utt.path}: synthesised no speech"
    tmp = target.with_suffix(".tmp.wav")
    sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16")
    tmp.replace(target)  # a killed run never leaves a partial file that a rerun would skip
    return utt.index, len(audio) / SAMPLE_RATE, ""


def _licences_md(used: list[Utterance], voices: dict[str, Voice], sources: dict[str, TextSource]) -> str:
    lines = [
        "# Licences of this corpus",
        "",
        "Synthetic speech made with Debian's synthesisers from text in Debian packages. Each package's full",
        "terms: /usr/share/doc/PACKAGE/copyright on a Debian system.",
        "",
        "## Voices",
        "",
        "| engine | voice | language | Debian package | licence | files |",
        "|---|---|---|---|---|---:|",
    ]
    counts: dict[tuple[str, str], int] = {}
    for u in used:
        counts[(u.engine, u.voice)] = counts.get((u.engine, u.voice), 0) + 1
    for (engine, name), n in sorted(counts.items()):
        v = voices[f"{engine}/{name}"]
        lines.append(f"| {engine} | {name} | {v.language} | {v.package} | {v.licence} | {n} |")
    lines += ["", "## Texts", "", "| language | Debian package | licence | files |", "|---|---|---|---:|"]
    by_lang: dict[str, int] = {}
    for u in used:
        by_lang[u.language] = by_lang.get(u.language, 0) + 1
    for lang, n in sorted(by_lang.items()):
        s = sources[lang]
        lines.append(f"| {lang} | {s.package} | {s.licence} | {n} |")
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def build(out_dir: Path, minutes: float = 90.0, seed: int = 0, jobs: int = 2, progress: bool = True) -> dict:
    """Build (or complete) the corpus in `out_dir`; returns a summary. Existing files are kept as they are."""
    from tqdm import tqdm

    texts = available_texts()
    found, warnings = find_voices(set(texts))
    for w in warnings:
        print(f"corpus: warning: {w} (or run scripts/training-deps.sh)", file=sys.stderr)
    if not found:
        raise RuntimeError(
            "no speech synthesiser with a usable voice is installed: run scripts/training-deps.sh"
        )
    voices = {f"{v.engine}/{v.name}": v for vs in found.values() for v in vs}
    utterances = plan(found, texts, minutes, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [u for u in utterances if not (out_dir / u.path).exists()]
    seconds: dict[int, float | None] = {}
    failures = []
    if todo:
        jobs_args = [
            (
                u,
                voices[f"{u.engine}/{u.name_key}"] if False else voices[f"{u.engine}/{u.voice}"],
                str(out_dir),
            )
            for u in todo
        ]
        ctx = multiprocessing.get_context("forkserver" if sys.platform != "win32" else "spawn")
        with ctx.Pool(max(1, jobs), initializer=_init_worker) as pool:
            bar = tqdm(total=len(todo), unit="utt", desc="corpus", disable=not progress)
            for index, secs, err in pool.imap_unordered(_build_one, jobs_args, chunksize=4):
                seconds[index] = secs
                if err:
                    failures.append(err)
                bar.update()
            bar.close()
    for msg in failures:
        print(f"corpus: warning: skipped {msg}", file=sys.stderr)

    manifest, used = [], []
    sources = {lang: src for lang, (src, _) in texts.items()}
    for u in utterances:
        path = out_dir / u.path
        if not path.exists():
            continue
        secs = seconds.get(u.index)
        if secs is None:
            secs = sf.info(path).frames / SAMPLE_RATE
        v = voices[f"{u.engine}/{u.voice}"]
        record = {
            "path": u.path,
            "engine": u.engine,
            "voice": u.voice,
            "language": u.language,
            "variant": u.variant,
            "rate": u.rate,
            "pitch": u.pitch,
            "peak_dbfs": u.peak_dbfs,
            "text": u.text,
            "seconds": round(secs, 4),
            "licence": f"voice: {v.licence} ({v.package}); text: {sources[u.language].licence} "
            f"({sources[u.language].package})",
        }
        manifest.append(json.dumps(record, ensure_ascii=False))
        used.append(u)
    _write_if_changed(out_dir / "manifest.jsonl", "\n".join(manifest) + "\n" if manifest else "")
    _write_if_changed(out_dir / "LICENCES.md", _licences_md(used, voices, sources))
    return summarise([json.loads(line) for line in manifest], written=len(todo) - len(failures))


def summarise(records: list[dict], written: int = 0) -> dict:
    def minutes_by(key):
        out: dict[str, float] = {}
        for r in records:
            out[r[key]] = out.get(r[key], 0.0) + r["seconds"] / 60
        return {k: round(v, 2) for k, v in sorted(out.items())}

    return {
        "files": len(records),
        "written": written,
        "minutes": round(sum(r["seconds"] for r in records) / 60, 2),
        "minutes_per_engine": minutes_by("engine"),
        "minutes_per_language": minutes_by("language"),
        "voices": len({(r["engine"], r["voice"]) for r in records}),
        "voice_variants": len({(r["engine"], r["voice"], r["variant"]) for r in records}),
        "settings": len({(r["engine"], r["voice"], r["variant"], r["rate"], r["pitch"]) for r in records}),
        "languages": len({r["language"] for r in records}),
        "median_seconds": float(np.median([r["seconds"] for r in records])) if records else math.nan,
    }
