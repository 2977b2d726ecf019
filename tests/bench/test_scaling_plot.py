"""`bench serve-load` keeps each run's rows as JSON and plots every saved run: streams vs p99 latency."""

from __future__ import annotations

import json

from xcodec_stream.bench.serve_load import plot_scaling


def _row(n: int, p99: float, realtime: bool) -> dict:
    return {"n": n, "proc_p99": p99, "e2e_p99": p99 + 260.0, "realtime": realtime}


def test_plot_has_every_saved_run(tmp_path):
    runs = {
        "serve-load-random-tiny-cpu.json": [_row(1, 120.0, True), _row(2, 550.0, False)],
        "serve-load-random-full-cuda.json": [_row(n, 15.0 + n / 100, True) for n in (1, 10, 100, 1000)],
    }
    for name, rows in runs.items():
        (tmp_path / name).write_text(json.dumps({"label": name, "date": "2026-11-26", "rows": rows}))
    (tmp_path / "unrelated.json").write_text("not json")  # only serve-load*.json files are read
    out = plot_scaling(tmp_path, tmp_path / "scaling.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000  # two panels with curves, not an empty canvas
