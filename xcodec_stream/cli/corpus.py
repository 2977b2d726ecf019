"""`xcodec-stream corpus --out DIR`: build a synthetic multi-speaker, multi-language speech corpus for training."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "corpus",
        help="synthesise a speech training corpus with espeak-ng, flite and festival",
        description="Write DIR/*.wav (16 kHz mono PCM16, one utterance each), DIR/manifest.jsonl and "
        "DIR/LICENCES.md from the synthesisers and voices installed (scripts/training-deps.sh installs them). "
        "Deterministic for a seed; files already in DIR are kept, so an interrupted run can be resumed.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--minutes", type=float, default=90.0, help="minutes of speech to plan (default 90)")
    p.add_argument("--seed", type=int, default=0, help="seed of voices, settings and sentences (default 0)")
    p.add_argument("--jobs", type=int, default=2, help="synthesis processes (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from xcodec_stream.training.corpus import build

    if args.minutes <= 0 or args.jobs < 1:
        raise ValueError("--minutes must be positive and --jobs at least 1")
    start = time.perf_counter()
    summary = build(args.out, minutes=args.minutes, seed=args.seed, jobs=args.jobs, progress=not args.quiet)
    summary["build_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0
