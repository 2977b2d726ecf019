"""Sentences to synthesise, per language, read from prose that Debian packages install (fortunes, man pages)."""

from __future__ import annotations

import functools
import gzip
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
MAN = Path("/usr/share/man")

MIN_WORDS, MAX_WORDS = 3, 25
# Enough sentences for thousands of distinct utterances; capping keeps start-up at a second or two.
MAX_SENTENCES = 6000

# The evaluation clips are CMU ARCTIC recordings: their prompts must never be synthesised for training.
ARCTIC_EVAL_PROMPTS = (
    "Will we ever forget it.",
    "God bless 'em, I hope I'll go on seeing them forever.",
)


@dataclass(frozen=True)
class TextSource:
    language: str
    package: str
    licence: str
    kind: str  # "fortune" (%-separated cookies) or "man" (roff pages)
    where: str  # fortune folder or file under FORTUNES, or the man page locale under MAN


# Fortune files that are pictures, off-colour or in another language than their folder.
# "brasil" is fortunes-br's Portuguese file, installed beside the English ones.
_SKIP_FORTUNE_FILES = {
    "ascii-art",
    "asciiart",
    "banner",
    "art",
    "translate-me",
    "klasik-sk",
    "lkml",
    "brasil",
}

SOURCES = (
    TextSource("en", "fortunes", "BSD-3-Clause (fortune-mod); cookies quote many authors", "fortune", "."),
    TextSource("de", "fortunes-de", "GPL-2+", "fortune", "de"),
    TextSource("it", "fortunes-it", "public domain", "fortune", "it"),
    TextSource("es", "fortunes-es", "GPL-2+", "fortune", "es"),
    TextSource("ru", "fortunes-ru", "GPL-2", "fortune", "ru"),
    TextSource("pt", "fortunes-br", "GPL-2+", "fortune", "brasil"),
    TextSource("cs", "fortunes-cs", "GPL", "fortune", "cs"),
    TextSource("pl", "fortunes-pl", "GPL-2+", "fortune", "pl"),
    TextSource(
        "fr", "manpages-fr", "GPL-3+ (translations); pages under their own free licences", "man", "fr"
    ),
    TextSource(
        "fi", "manpages-fi", "GPL-3+ (translations); pages under their own free licences", "man", "fi"
    ),
    TextSource(
        "nl", "manpages-nl", "GPL-3+ (translations); pages under their own free licences", "man", "nl"
    ),
    TextSource(
        "sv", "manpages-sv", "GPL-3+ (translations); pages under their own free licences", "man", "sv"
    ),
    TextSource(
        "hu", "manpages-hu", "GPL-3+ (translations); pages under their own free licences", "man", "hu"
    ),
)

_TYPOGRAPHY = str.maketrans(
    {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"'}
    | {"\u00bb": '"', "\u2013": ",", "\u2014": ",", "\u2026": "...", "\u00a0": " ", "\u00ad": ""}
)
# A sentence is prose when it has none of these: code, paths, options, markup, numbers, e-mail, ASCII art.
_NOT_PROSE = re.compile(r"[0-9/\\_=<>\[\]{}|@#$%^*~`+&]|(^|\s)[-'\"]|\.\w|:\S|\s{2}|[A-Z]{3}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[^\W\d_])", re.UNICODE)


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFC", text).translate(_TYPOGRAPHY)
    return re.sub(r"\s+", " ", text).strip()


def _prose(sentence: str) -> bool:
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or sentence[-1] not in ".!?" or not sentence[0].isupper():
        return False
    if _NOT_PROSE.search(sentence) or sentence.count('"') % 2 or sentence.count("(") != sentence.count(")"):
        return False
    letters = sum(c.isalpha() for c in sentence)
    return letters >= 0.75 * len(sentence.replace(" ", ""))


def split_sentences(paragraph: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(normalise(paragraph)) if s and _prose(s)]


def _fortune_paragraphs(where: Path) -> list[str]:
    if where.is_file():
        files = [where]
    else:
        files = [p for p in sorted(where.iterdir()) if p.is_file() and not p.is_symlink()]
        skip = {".dat", ".u8"}
        files = [p for p in files if p.suffix not in skip and p.name not in _SKIP_FORTUNE_FILES]
    paragraphs = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for cookie in text.split("\n%\n"):
            # Attribution lines ("-- Mark Twain") and indented verse are not running prose.
            lines = [ln for ln in cookie.splitlines() if ln.strip() and not ln.lstrip().startswith("--")]
            paragraphs.append(" ".join(lines))
    return paragraphs


_ROFF_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),  # font changes
    (re.compile(r"\\s[-+]?\d"), ""),  # size changes
    (re.compile(r"\\\((em|en|hy)"), "-"),
    (re.compile(r"\\\(aq"), "'"),
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[&c%]"), ""),
    (re.compile(r"\\ "), " "),
]
_ROFF_FONT_MACROS = {".B", ".I", ".BR", ".RB", ".IR", ".RI", ".BI", ".IB", ".SM"}


def _man_paragraphs(locale_dir: Path) -> list[str]:
    paragraphs = []
    for path in sorted(locale_dir.glob("man[1-8]/*.gz")):
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        except (OSError, EOFError):
            continue
        current: list[str] = []
        for line in text.splitlines():
            head = line.split(" ", 1)
            if head[0] in _ROFF_FONT_MACROS and len(head) == 2:
                line = head[1].replace('"', "")
            elif line.startswith((".", "'")):
                # Any other request ends a paragraph (.PP, .SH, .TP, .IP, ...).
                if current:
                    paragraphs.append(" ".join(current))
                current = []
                continue
            for pattern, repl in _ROFF_ESCAPES:
                line = pattern.sub(repl, line)
            if "\\" not in line:
                current.append(line)
        if current:
            paragraphs.append(" ".join(current))
    return paragraphs


# Common English words that are not words of the man page languages (fr, fi, nl, sv, hu).
_ENGLISH_WORDS = {"the", "and", "of", "will", "this", "that", "with", "you", "are", "which", "should", "from"}


def _key(sentence: str) -> str:
    return re.sub(r"[^\w]+", " ", sentence.casefold()).strip()


_EXCLUDED = {_key(s) for s in ARCTIC_EVAL_PROMPTS}


def load_sentences(source: TextSource) -> list[str]:
    """Distinct prose sentences of `source` in a fixed order; empty when its package is not installed."""
    if source.kind == "fortune":
        where = FORTUNES / source.where
        paragraphs = _fortune_paragraphs(where) if where.exists() else []
    else:
        folder = MAN / source.where
        paragraphs = _man_paragraphs(folder) if folder.is_dir() else []
        # Translated man pages keep some paragraphs in English.
        paragraphs = [p for p in paragraphs if not _ENGLISH_WORDS & set(p.casefold().split())]
    seen: set[str] = set()
    sentences = []
    for paragraph in paragraphs:
        for sentence in split_sentences(paragraph):
            key = _key(sentence)
            if key not in seen and key not in _EXCLUDED:
                seen.add(key)
                sentences.append(sentence)
    if len(sentences) > MAX_SENTENCES:
        # An even stride keeps every file represented rather than only the first ones.
        step = len(sentences) / MAX_SENTENCES
        sentences = [sentences[int(i * step)] for i in range(MAX_SENTENCES)]
    return sentences


@functools.cache  # parsing takes seconds; the installed packages do not change within a process
def available_texts() -> dict[str, tuple[TextSource, list[str]]]:
    """Language -> (source, sentences) for each installed text source that yields sentences (do not modify)."""
    out = {}
    for source in SOURCES:
        sentences = load_sentences(source)
        if sentences:
            out[source.language] = (source, sentences)
    return out
