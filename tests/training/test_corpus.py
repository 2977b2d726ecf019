"""`xcodec-stream corpus`: a tiny corpus from whatever synthesisers are installed (skips when there are none)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from xcodec_stream.cli.main import main
from xcodec_stream.training.corpus_text import ARCTIC_EVAL_PROMPTS, split_sentences

ENGINES = ("espeak-ng", "flite", "text2wave")


@pytest.fixture(scope="module")
def installed():
    have = [e for e in ENGINES if shutil.which(e)]
    if not have:
        reason = (
            "no speech synthesiser installed (scripts/training-deps.sh installs espeak-ng, flite, festival)"
        )
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return have


def _build(out, seed=0):
    assert (
        main(["corpus", "--out", str(out), "--minutes", "0.2", "--seed", str(seed), "--jobs", "2", "--quiet"])
        == 0
    )
    return (out / "manifest.jsonl").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(installed, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, _build(out)


def test_files_match_manifest(corpus):
    out, manifest = corpus
    records = [json.loads(line) for line in manifest.splitlines()]
    assert records
    assert sorted(r["path"] for r in records) == sorted(p.name for p in out.glob("*.wav"))
    keys = {"path", "engine", "voice", "language", "variant", "rate", "pitch", "text", "seconds", "licence"}
    for r in records:
        assert keys <= r.keys()
        audio, rate = sf.read(out / r["path"], dtype="float32", always_2d=True)
        info = sf.info(out / r["path"])
        assert rate == 16000 and audio.shape[1] == 1 and info.subtype == "PCM_16"
        assert abs(len(audio) / rate - r["seconds"]) < 1e-3
        assert np.sqrt(np.mean(audio**2)) > 0.005, r["path"]  # not silent
        assert 3 <= len(r["text"].split()) <= 25
    licences = (out / "LICENCES.md").read_text(encoding="utf-8")
    for engine in {r["engine"] for r in records}:
        assert engine in licences


def test_deterministic_and_idempotent(corpus, tmp_path):
    out, manifest = corpus
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert _build(out) == manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing rewritten
    assert _build(tmp_path) == manifest  # same seed, fresh folder: same plan
    other = tmp_path / "other"
    assert _build(other, seed=1) != manifest


def test_sentence_filter_keeps_prose_and_drops_arctic_prompts():
    assert split_sentences("Hello there, my friend. Use --force to /usr/bin it. Go!") == [
        "Hello there, my friend."
    ]
    from xcodec_stream.training.corpus_text import _EXCLUDED, _key

    assert all(_key(p) in _EXCLUDED for p in ARCTIC_EVAL_PROMPTS)
