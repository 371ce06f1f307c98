#!/usr/bin/env bash
# Downloads the wheels that the lent GPU machine lacks for this project into .whl/ (ignored by git),
# for Python 3.12 on x86-64 Linux: that machine reaches no registry, and its image already holds torch,
# numpy, aiohttp, safetensors, sentencepiece, huggingface-hub, einops, tqdm, prometheus-client,
# matplotlib and transformers (docs/gpu.md). Run it here, then carry .whl with the run (docs/gpu.md).
#
#   scripts/device_wheels.sh            # moshi (--no-deps: its torch pin would pull a 2 GB wheel) and sphn
#   PYTHON=python3 scripts/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=.whl
mkdir -p "$DEST"
# name==version: what duplex imports that the image lacks (moshi's other needs are there or unused:
# bitsandbytes only for quantized checkpoints, sounddevice only for moshi's own client)
WHEELS=("moshi==0.2.13" "sphn==0.2.1")
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)
args=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d "$DEST")
for p in "${PLATFORMS[@]}"; do args+=(--platform "$p"); done
for wheel in "${WHEELS[@]}"; do
  "$PYTHON" -m pip download -q "${args[@]}" "$wheel"
done
ls -l "$DEST"
echo "carry .whl; on the machine: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:\$PWD"
