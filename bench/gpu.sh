#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (issue 26): a CUDA build of the pinned llama-cpp-python in a
# venv of its own (.venv-cuda), `edged doctor`, the GPU test subset (tests/gpu: `auto` offloads
# every layer of the default model; output matches the CPU's within the drift it prints), and
# the side-by-side against llama-server built with CUDA from the same sdist, written to
# bench/RESULTS.md under the card's name. Nothing else (CI included) depends on it.
#   bash bench/gpu.sh            # needs nvcc (the CUDA toolkit) and cmake
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null || { echo "gpu.sh: no NVIDIA GPU here" >&2; exit 2; }
CARD="$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
PIN="$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | head -1)"
VENV="${EDGED_CUDA_VENV:-.venv-cuda}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"

if ! "$VENV/bin/python" -c 'import daemon' 2>/dev/null; then
    python3 -m venv "$VENV"
    CMAKE_ARGS="-DGGML_CUDA=on" "$VENV/bin/pip" install --no-cache-dir "$PIN"
    "$VENV/bin/pip" install -e '.[test,bench]'
fi
echo "== $CARD"
"$VENV/bin/edged" doctor
"$VENV/bin/python" -m pytest tests/gpu -q -s -p no:cacheprovider | tee /tmp/edged-gpu-tests.log

PEER="$(EDGED_PEER_CMAKE_ARGS="-DGGML_CUDA=on" PYTHON="$VENV/bin/python" \
    bash bench/build_llama_server.sh | tail -1)"
EDGED_LLAMA_SERVER="$PEER" "$VENV/bin/python" bench/vs_llama_server.py \
    --rounds 3 --threads "$(nproc)" --peer-args "-ngl 999" --tag "GPU, $CARD" --write
