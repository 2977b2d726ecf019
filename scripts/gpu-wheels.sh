#!/usr/bin/env bash
# Fetch, on a machine with PyPI access, the wheels that a GPU machine without internet lacks (its image has
# torch, numpy, safetensors, huggingface_hub, msgpack, tqdm, prometheus-client, pytest, hypothesis,
# matplotlib): they go to .whl/ (git-ignored locally), for scripts/gpu-check.sh to install there.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY="${PYTHON:-.venv/bin/python}"
for spec in websockets==17.4 soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 pytest-asyncio==1.5.0 sounddevice==0.5.6; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$spec"
done
ls -1 .whl
