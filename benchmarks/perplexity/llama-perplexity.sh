#!/usr/bin/env bash
# Build llama.cpp's own `llama-perplexity` from the llama.cpp that llama-cpp-python vendors (the
# version our runtime runs, with our patches), in the build folder benchmarks/variants/llama-peers.sh
# keeps: the peer `packer eval` is measured against (benchmarks/perplexity/run.py). Only the tool
# itself is compiled there (libllama and ggml are already built), so after llama-peers.sh it
# takes a minute or two. Not part of any model.run.
#
# Usage: benchmarks/perplexity/llama-perplexity.sh [VARIANT] [PYTHON]   prints the binary's path
#          VARIANT  ggml CPU variant for llama-peers.sh (default: haswell), used when the peers'
#                   build folder does not exist yet; an existing one is used as it is configured
#          PYTHON   an interpreter with pip, for llama-peers.sh (default: python3)
# Env:   LLAMA_CPP_VERSION, PACKER_LLAMA_PEERS_CACHE, CMAKE_BUILD_PARALLEL_LEVEL: as llama-peers.sh
set -euo pipefail

VARIANT=${1:-haswell}
PY=${2:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VERSION=${LLAMA_CPP_VERSION:-$(sed -n 's/^VERSION=\${LLAMA_CPP_VERSION:-\(.*\)}$/\1/p' "$ROOT/build/llama-wheel.sh")}
[[ -n $VERSION ]] || { echo "llama-perplexity.sh: could not read the version from llama-wheel.sh" >&2; exit 1; }
CACHE=${PACKER_LLAMA_PEERS_CACHE:-$HOME/.cache/packer/llama-peers}/$VERSION-$(uname -m)
OUT=$CACHE/perplexity
BIN=$OUT/llama-perplexity

if [[ ! -x $BIN ]]; then
    if [[ ! -f $CACHE/build/CMakeCache.txt ]]; then
        "$ROOT/benchmarks/variants/llama-peers.sh" "$VARIANT" "$PY" >/dev/null
    fi
    exec 9>"$CACHE/.lock"
    flock 9 # the peers' build folder: one build at a time
    echo "llama-perplexity.sh: building llama-perplexity in $CACHE/build" >&2
    nice -n 10 cmake --build "$CACHE/build" --target llama-perplexity \
        -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" >&2
    mkdir -p "$OUT"
    cp "$CACHE/build/bin/llama-perplexity" "$BIN.tmp"
    # the CPU features it was compiled for (the build folder's configuration)
    grep -E '^GGML_(AVX|AVX2|AVX512|FMA|F16C|BMI2|AVX_VNNI|AVX512_VNNI|AVX512_BF16):BOOL=ON' \
        "$CACHE/build/CMakeCache.txt" | cut -d: -f1 | tr '\n' ' ' >"$OUT/features.txt" || true
    mv "$BIN.tmp" "$BIN"
fi
echo "$BIN"
