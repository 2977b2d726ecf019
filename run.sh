#!/usr/bin/env bash
# One entry point for people and CI: creates or reuses .venv, then runs the daemon or the tests.
#   ./run.sh serve [FLAGS]   start the daemon on configs/default.toml (falls back to random:full, loudly,
#                            when the default checkpoint cannot be had)
#   ./run.sh test [PYTEST ARGS]   install test extras (and the system audio/browser stack where possible), run pytest
#   ./run.sh <any xcodec-stream subcommand>   e.g. ./run.sh client --file in.wav --out out.wav
set -euo pipefail
cd "$(dirname "$0")"
cmd="${1:-serve}"; shift || true

case "$cmd" in
  test)
    scripts/bootstrap.sh test
    source .venv/bin/activate
    # Test tensors are small and the end-to-end tests run daemons beside pytest on 2 cores: one intra-op
    # thread per process avoids OpenMP spin-waiting (3x faster parity tests under load). Override if you like.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    set +e
    python -m pytest "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
      echo "run.sh: pytest collected no tests (exit 5) - treating as failure" >&2
      exit 1
    fi
    exit "$rc"
    ;;
  serve)
    scripts/bootstrap.sh
    exec .venv/bin/xcodec-stream serve --config configs/default.toml --fallback-random "$@"
    ;;
  *)
    scripts/bootstrap.sh
    exec .venv/bin/xcodec-stream "$cmd" "$@"
    ;;
esac
