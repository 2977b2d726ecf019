"""Benchmarks: offline model, streaming engine, server load. Each writes its table to docs/BENCHMARKS.md."""
