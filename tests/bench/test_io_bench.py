"""`bench io`: a daemon process with the fake codec, streams driven from this process, a section and a JSON."""

from __future__ import annotations

import argparse
import json

from xcodec_stream.bench import io_ceiling


def test_io_bench_writes_its_section_and_json(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nkept\n")
    args = argparse.Namespace(
        streams="4", seconds=0.6, warmup=0.3, chunk_ms=20.0, batch_wait_ms=10.0, out=str(out)
    )
    assert io_ceiling.run(args) == 0
    text = out.read_text()
    assert "kept" in text and "<!-- bench:io:begin -->" in text and "<!-- bench:io:end -->" in text
    (row,) = json.loads((tmp_path / "bench" / "io.json").read_text())["rows"]
    assert row["streams"] == 4 and row["errors"] == 0 and row["unanswered"] == 0
    assert row["in_s"] > 100 and row["out_s"] > 50 and 0 < row["lag_p50_ms"] < 1000
