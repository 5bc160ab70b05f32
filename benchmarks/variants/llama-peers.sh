#!/usr/bin/env bash
# Build llama.cpp's own `llama-bench` and `llama-server` for ONE CPU variant of ggml, from the
# llama.cpp that llama-cpp-python vendors (the version our runtime runs, with our patches from
# build/patches/VERSION/), with the machine's gcc, as llama.cpp's own build would: the peers our
# runtime's one-shot, prompt and server speed are measured against, variant by variant
# (benchmarks/variants/run.py; benchmarks/server/run.py --llama-server DIR/llama-server).
# Not part of any model.run.
#
# Usage: benchmarks/variants/llama-peers.sh VARIANT [PYTHON]   prints the folder holding both
#          VARIANT  a name of ggml's x86-64 CPU variants (haswell, zen4, sapphirerapids, ...): the
#                   instruction set features ggml's GGML_CPU_ALL_VARIANTS build gives that
#                   variant, read from the vendored ggml/src/CMakeLists.txt
#          PYTHON   an interpreter with pip, to download the sdist (default: python3)
# Env:   LLAMA_CPP_VERSION           llama-cpp-python version (default: the one llama-wheel.sh pins)
#        PACKER_LLAMA_PEERS_CACHE    where it goes (default ~/.cache/packer/llama-peers)
#        CMAKE_BUILD_PARALLEL_LEVEL  compile jobs (default 2)
#
# Statically linked, CPU only, OpenMP as llama.cpp's default. One build folder is shared by all
# variants: after the first (~10 minutes on 2 cores) another variant recompiles only ggml's CPU
# backend (~3 minutes).
set -euo pipefail

VARIANT=${1:?usage: llama-peers.sh VARIANT [PYTHON]}
PY=${2:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VERSION=${LLAMA_CPP_VERSION:-$(sed -n 's/^VERSION=\${LLAMA_CPP_VERSION:-\(.*\)}$/\1/p' "$ROOT/build/llama-wheel.sh")}
[[ -n $VERSION ]] || { echo "llama-peers.sh: could not read the version from llama-wheel.sh" >&2; exit 1; }
CACHE=${PACKER_LLAMA_PEERS_CACHE:-$HOME/.cache/packer/llama-peers}/$VERSION-$(uname -m)
OUT=$CACHE/$VARIANT

if [[ ! -x $OUT/llama-bench || ! -x $OUT/llama-server ]]; then
    command -v cmake >/dev/null && command -v c++ >/dev/null || {
        echo "llama-peers.sh: needs cmake and a C++ compiler: apt-get install -y build-essential cmake" >&2
        exit 1
    }
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9 # one build at a time in the shared build folder
    src=$CACHE/src/llama_cpp_python-$VERSION/vendor/llama.cpp
    if [[ ! -f $src/CMakeLists.txt ]]; then
        echo "llama-peers.sh: unpacking llama-cpp-python $VERSION's llama.cpp" >&2
        rm -rf "$CACHE/src"
        mkdir -p "$CACHE/src"
        "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" \
            -d "$CACHE/src" >&2
        tar -xzf "$CACHE/src/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE/src"
        for p in "$ROOT/build/patches/$VERSION"/*.patch; do
            [[ -f $p ]] && patch -s -p1 -d "$CACHE/src/llama_cpp_python-$VERSION" <"$p"
        done
    fi
    line=$(grep -E "^[[:space:]]*ggml_add_cpu_backend_variant\($VARIANT( |\))" "$src/ggml/src/CMakeLists.txt" | head -1) || {
        echo "llama-peers.sh: ggml has no CPU variant named $VARIANT" >&2
        exit 1
    }
    features=$(sed -E 's/.*\(([^)]*)\).*/\1/' <<<"$line")
    features=$(echo ${features#"$VARIANT"})
    flags=()
    for f in SSE42 AVX AVX_VNNI AVX2 BMI2 FMA F16C AVX512 AVX512_VBMI AVX512_VNNI AVX512_BF16 \
        AMX_TILE AMX_INT8 AMX_BF16; do
        if [[ " $features " == *" $f "* ]]; then flags+=("-DGGML_$f=ON"); else flags+=("-DGGML_$f=OFF"); fi
    done
    echo "llama-peers.sh: building llama-bench and llama-server for $VARIANT ($features )" >&2
    cmake -S "$src" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON "${flags[@]}" >&2
    nice -n 10 cmake --build "$CACHE/build" --target llama-bench llama-server \
        -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" >&2
    mkdir -p "$OUT"
    for b in llama-bench llama-server; do
        cp "$CACHE/build/bin/$b" "$OUT/$b.tmp"
        mv "$OUT/$b.tmp" "$OUT/$b"
    done
fi
echo "$OUT"
