"""The synthesisers a training corpus can use (espeak-ng, flite, festival): which voices are installed, what
to install for the rest, and one utterance to a float waveform."""

from __future__ import annotations

import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


@dataclass(frozen=True)
class Voice:
    engine: str  # "espeak-ng" | "flite" | "festival"
    name: str  # the engine's own voice id
    language: str  # a language of corpus_text.SOURCES
    package: str  # Debian package that ships the voice
    licence: str
    encoding: str = "utf-8"  # festival reads bytes: each voice's lexicon expects its own legacy charset


ESPEAK_LICENCE = "GPL-3+ (espeak-ng and its voice data)"
# espeak-ng voices per text language: regional accents count as distinct speakers.
ESPEAK_VOICES = {
    "en": ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
    + ("en-us-nyc",),
    "de": ("de",),
    "fr": ("fr-fr", "fr-be", "fr-ch"),
    "es": ("es", "es-419"),
    "it": ("it",),
    "pt": ("pt-br", "pt"),
    "nl": ("nl",),
    "pl": ("pl",),
    "sv": ("sv",),
    "ru": ("ru",),
    "cs": ("cs",),
    "fi": ("fi",),
    "hu": ("hu",),
}
# Whispered variants have no voicing and "fast" is a test voice: not speech a codec should learn from.
ESPEAK_SKIP_VARIANTS = {"whisper", "whisperf", "fast"}

_FLITE_LICENCE = "Flite licence (BSD-style, CMU)"
FLITE_VOICES = {
    "kal": ("en", _FLITE_LICENCE + "; diphones of a US male speaker, 8 kHz"),
    "kal16": ("en", _FLITE_LICENCE + "; diphones of a US male speaker"),
    "awb": ("en", _FLITE_LICENCE + "; clustergen, CMU ARCTIC speaker awb (Scottish male)"),
    "rms": ("en", _FLITE_LICENCE + "; clustergen, CMU ARCTIC speaker rms (US male)"),
    "slt": ("en", _FLITE_LICENCE + "; clustergen, CMU ARCTIC speaker slt (US female)"),
}

FESTIVAL_VOICES = (
    Voice("festival", "kal_diphone", "en", "festvox-kallpc16k", "Festival licence (X11-style)", "ascii"),
    Voice("festival", "ked_diphone", "en", "festvox-kdlpc16k", "Festival licence (X11-style)", "ascii"),
    Voice(
        "festival",
        "cmu_us_slt_arctic_hts",
        "en",
        "festvox-us-slt-hts",
        "BSD-3-Clause; CMU ARCTIC slt",
        "ascii",
    ),
    Voice("festival", "lp_diphone", "it", "festvox-italp16k", "GPL-2+", "latin-1"),
    Voice("festival", "pc_diphone", "it", "festvox-itapc16k", "GPL-2+", "latin-1"),
    Voice("festival", "msu_ru_nsh_clunits", "ru", "festvox-ru", "BSD-style", "utf-8"),
    Voice("festival", "suo_fi_lj_diphone", "fi", "festvox-suopuhe-lj", "LGPL-2+", "latin-1"),
    Voice("festival", "hy_fi_mv_diphone", "fi", "festvox-suopuhe-mv", "LGPL-2+", "latin-1"),
    Voice("festival", "czech_dita", "cs", "festvox-czech-dita", "GPL-3+", "iso-8859-2"),
    Voice("festival", "czech_krb", "cs", "festvox-czech-krb", "GPL-3+", "iso-8859-2"),
    Voice("festival", "czech_machac", "cs", "festvox-czech-machac", "GPL-3+", "iso-8859-2"),
    Voice("festival", "czech_ph", "cs", "festvox-czech-ph", "GPL-3+", "iso-8859-2"),
)
# Installable but unused: no Debian package has running text in Catalan, Hindi, Marathi or Telugu.
FESTIVAL_NO_TEXT = ("upc_ca_ona_hts", "hindi_NSK_diphone", "marathi_NSK_diphone", "telugu_NSK_diphone")

ENGINE_PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival"}


def _run(cmd: list[str], data: bytes | None = None, timeout: float = 120) -> str:
    done = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout, check=True)
    return done.stdout.decode("utf-8", errors="replace")


def espeak_variants() -> list[str]:
    """Voice variant names (m1, f3, klatt2, ...) of the installed espeak-ng, sorted; '' is the plain voice."""
    names = set()
    for line in _run(["espeak-ng", "--voices=variant"]).splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and fields[4].startswith("!v/"):
            names.add(fields[4][3:])
    return [""] + sorted(names - ESPEAK_SKIP_VARIANTS)


def _espeak_voices(languages) -> list[Voice]:
    installed = {line.split()[1] for line in _run(["espeak-ng", "--voices"]).splitlines()[1:] if line.split()}
    return [
        Voice("espeak-ng", name, lang, "espeak-ng", ESPEAK_LICENCE)
        for lang in sorted(languages)
        for name in ESPEAK_VOICES.get(lang, ())
        if name in installed
    ]


def _flite_voices() -> list[Voice]:
    # `flite -lv` prints "Voices available: kal awb_time kal16 awb rms slt" (awb_time only says the time).
    listed = _run(["flite", "-lv"]).split(":", 1)[-1].split()
    return [
        Voice("flite", v, *FLITE_VOICES[v][:1], "flite", FLITE_VOICES[v][1])
        for v in listed
        if v in FLITE_VOICES
    ]


def _festival_voices() -> list[Voice]:
    listed = set(_run(["festival", "-b", "(print (voice.list))"]).strip().strip("()").split())
    return [v for v in FESTIVAL_VOICES if v.name in listed]


def find_voices(languages) -> tuple[dict[str, list[Voice]], list[str]]:
    """Installed voices per engine whose language has text, and warnings naming the packages that are missing."""
    voices: dict[str, list[Voice]] = {}
    warnings = []
    finders = {
        "espeak-ng": lambda: _espeak_voices(languages),
        "flite": _flite_voices,
        "festival": _festival_voices,
    }
    for engine, finder in finders.items():
        if shutil.which(engine) is None:
            warnings.append(f"{engine} is not installed: apt-get install {ENGINE_PACKAGES[engine]}")
            continue
        found = [v for v in finder() if v.language in languages]
        if found:
            voices[engine] = found
        if engine == "festival":
            names = {v.name for v in found}
            missing = sorted(
                {v.package for v in FESTIVAL_VOICES if v.name not in names and v.language in languages}
            )
            if missing:
                warnings.append(f"festival voices missing: apt-get install {' '.join(missing)}")
    return voices, warnings


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def synthesise(
    voice: Voice, text: str, variant: str, rate: float, pitch: float, workdir: Path
) -> tuple[np.ndarray, int]:
    """One utterance as float32 mono at the engine's sample rate. In the engine's units: `rate` is espeak-ng
    words/min or the flite/festival duration stretch; `pitch` is espeak-ng -p (0-99) or the flite f0 target
    mean in Hz (festival has no pitch setting common to its voices: the caller shifts it). `variant` is an
    espeak-ng voice variant ("" for none)."""
    out = workdir / "utt.wav"
    out.unlink(missing_ok=True)
    if voice.engine == "espeak-ng":
        name = f"{voice.name}+{variant}" if variant else voice.name
        # Text on stdin, so a sentence can never be taken for an option.
        _run(["espeak-ng", "-b", "1", "-v", name, "-s", str(int(rate)), "-p", str(int(pitch)),
              "-w", str(out)], text.encode("utf-8"))  # fmt: skip
    elif voice.engine == "flite":
        text_file = workdir / "utt.txt"
        text_file.write_text(_ascii(text), encoding="ascii")
        _run(["flite", "-voice", voice.name, "--setf", f"duration_stretch={rate:.3f}",
              "--setf", f"int_f0_target_mean={pitch:.0f}", "-f", str(text_file), "-o", str(out)])  # fmt: skip
    else:
        data = (_ascii(text) if voice.encoding == "ascii" else text).encode(voice.encoding, errors="ignore")
        setup = f"(begin (voice_{voice.name}) (Parameter.set 'Duration_Stretch {rate:.3f}))"
        _run(["text2wave", "-eval", setup, "-o", str(out)], data)
    audio, sample_rate = sf.read(out, dtype="float32", always_2d=True)
    return audio.mean(axis=1), sample_rate
