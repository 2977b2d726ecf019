#!/usr/bin/env bash
# Every GPU check in one run (a GPU machine is lent for minutes): the CUDA tests, then the streaming, batch and
# serve-load benchmarks on the device. Results go to docs/ (BENCHMARKS.md sections, bench/*.json,
# scaling.png) and are copied to $OUT when set. Wheels the machine lacks: scripts/gpu-wheels.sh, carried as .whl/.
#   DEVICE=cuda MODEL=random:full CLIENTS=1,10,100,300,1000 COMPILE=cuda-graphs scripts/gpu-check.sh
# The engines' static step is captured as one CUDA graph per (preset, batch bucket) (COMPILE=cuda-graphs);
# COMPILE=eager measures the uncaptured step.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
MODEL="${MODEL:-random:full}"
CLIENTS="${CLIENTS:-1,10,100,300,1000}"
SESSIONS="${SESSIONS:-1,64,256,1024}"
COMPILE="${COMPILE:-cuda-graphs}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
WHEELS="${WHEELS:-.whl}"  # WHEELS=none: use the packages already installed (a dry run on the CPU)
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
log() { echo "== $(date -u +%H:%M:%S) $*"; }
status=0
log "device"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
log "tests on the device"
"$PY" -m pytest -q -p no:cacheprovider tests/streaming/test_devices.py tests/streaming/test_atomic.py \
  tests/streaming/test_compiled.py tests/serving/test_engine_process.py || status=1
log "bench stream ($MODEL, $DEVICE)"
"$PY" -m xcodec_stream.cli.main bench stream --model "$MODEL" --device "$DEVICE" --seconds "$SECONDS_PER_RUN" \
  --long-minutes 1 --compile "eager,$COMPILE" || status=1
log "bench batch ($MODEL, $DEVICE, sessions $SESSIONS): the engine alone, streams per device"
"$PY" -m xcodec_stream.cli.main bench batch --model "$MODEL" --device "$DEVICE" --sessions "$SESSIONS" \
  --compile "$COMPILE" || status=1
log "bench serve-load ($MODEL, $DEVICE, clients $CLIENTS)"
# one engine process (configs/gpu.toml); should that fail on this machine, the engine in a thread of the daemon
"$PY" -m xcodec_stream.cli.main bench serve-load --processes 1 --model "$MODEL" --device "$DEVICE" --clients "$CLIENTS" \
  --seconds "$SECONDS_PER_RUN" --chunk-ms 40 --keep-going --compile "$COMPILE" || {
  status=1
  log "bench serve-load with the engine in a thread ($MODEL, $DEVICE)"
  "$PY" -m xcodec_stream.cli.main bench serve-load --processes 0 --model "$MODEL" --device "$DEVICE" \
    --clients "$CLIENTS" --seconds "$SECONDS_PER_RUN" --chunk-ms 40 --keep-going --compile "$COMPILE"
}
if [ -n "${OUT:-}" ]; then
  cp docs/BENCHMARKS.md docs/scaling.png "$OUT"/ 2>/dev/null
  cp docs/bench/*.json "$OUT"/ 2>/dev/null
fi
log "done (status $status)"
exit "$status"
