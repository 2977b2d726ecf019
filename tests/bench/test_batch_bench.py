"""`xcodec-stream bench batch`: the engine alone with N sessions per step; runs and writes its section."""

from __future__ import annotations

from xcodec_stream.cli.main import main


def test_bench_batch_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    args = ["bench", "batch", "--model", "random:tiny", "--sessions", "1,3", "--steps", "2", "--threads", "1"]
    assert main([*args, "--output", str(out)]) == 0
    text = out.read_text()
    assert "<!-- bench:batch-random-tiny-cpu:begin -->" in text and "Machine:" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert len(rows) == 2  # one row per N
    assert "target ms (N=1 step + N x arithmetic)" in text
