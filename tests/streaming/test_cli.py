"""`xcodec-stream eval` and `xcodec-stream bench stream` on the tiny model: they run and write their reports."""

from __future__ import annotations

import pytest

from xcodec_stream.cli.main import main

CLIP = "tests/data/arctic_a0009.wav"


def test_eval_writes_its_section_and_plot(tmp_path):
    out = tmp_path / "STREAMING.md"
    out.write_text("# Streaming\n\nHand-written text stays.\n")
    args = [
        "eval",
        "--model",
        "random:tiny",
        "--clips",
        CLIP,
        "--out",
        str(out),
        "--presets",
        "low",
        "--no-sweep",
    ]
    assert main([*args, "--quiet"]) == 0
    text = out.read_text()
    assert "Hand-written text stays." in text
    assert "random-weight proxy" in text and "| **low** |" in text and "q8 %" in text
    png = tmp_path / "streaming_fidelity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([*args, "--quiet"]) == 0  # the section is replaced, not appended
    assert out.read_text().count("<!-- eval:begin -->") == 1


def test_eval_rejects_unknown_presets_and_missing_clips(tmp_path, capsys):
    assert main(["eval", "--model", "random:tiny", "--presets", "fast", "--out", str(tmp_path / "s.md")]) == 1
    assert "unknown preset" in capsys.readouterr().err
    assert main(["eval", "--model", "random:tiny", "--clips", str(tmp_path / "none*.wav")]) == 1
    assert "no clip matches" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["low"])
def test_bench_stream_writes_its_section(tmp_path, preset):
    out = tmp_path / "BENCHMARKS.md"
    args = [
        "bench",
        "stream",
        "--model",
        "random:tiny",
        "--threads",
        "1",
        "--seconds",
        "1",
        "--chunk-ms",
        "40",
    ]
    args += ["--presets", preset, "--long-minutes", "0.05", "--long-preset", preset, "--output", str(out)]
    assert main(args) == 0
    text = out.read_text()
    assert "<!-- bench:stream-random-tiny-cpu:begin -->" in text and "offline encode + decode" in text
    assert "GFLOP per audio s" in text and "RTF bound" in text and "RTF at op shapes" in text
    assert f"| {preset} | 40 |" in text and "Long stream" in text and "Machine:" in text
