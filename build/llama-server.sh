#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` from the llama.cpp that llama-cpp-python vendors (the same
# version our runtime runs), for benchmarks/server/run.py --llama-server: the peer our server's
# continuous batching is measured against in the same run. Not part of any model.run.
#
# Usage: build/llama-server.sh [PYTHON]     prints the path of the binary
#          PYTHON   an interpreter with pip, to download the sdist (default: python3)
# Env:   LLAMA_CPP_VERSION           llama-cpp-python version (default: the one llama-wheel.sh pins)
#        PACKER_LLAMA_SERVER_CACHE   where it goes (default ~/.cache/packer/llama-server)
#        CMAKE_BUILD_PARALLEL_LEVEL  compile jobs (default 2)
#
# Built for this machine (GGML_NATIVE=ON: the same instruction set as the CPU variant the
# runtime picks here), CPU only, statically linked; about 10 minutes on 2 cores, then cached.
set -euo pipefail

PY=${1:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=${LLAMA_CPP_VERSION:-$(sed -n 's/^VERSION=\${LLAMA_CPP_VERSION:-\(.*\)}$/\1/p' "$HERE/llama-wheel.sh")}
[[ -n $VERSION ]] || { echo "llama-server.sh: could not read the version from llama-wheel.sh" >&2; exit 1; }
CACHE=${PACKER_LLAMA_SERVER_CACHE:-$HOME/.cache/packer/llama-server}/$VERSION-$(uname -m)
BIN=$CACHE/llama-server

if [[ ! -x $BIN ]]; then
    command -v cmake >/dev/null && command -v c++ >/dev/null || {
        echo "llama-server.sh: needs cmake and a C++ compiler: apt-get install -y build-essential cmake" >&2
        exit 1
    }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "llama-server.sh: building llama-server from llama-cpp-python $VERSION's llama.cpp" >&2
    "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work" >&2
    tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
    src=$work/llama_cpp_python-$VERSION/vendor/llama.cpp
    cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >&2
    nice -n 10 cmake --build "$work/build" --target llama-server \
        -j "${CMAKE_BUILD_PARALLEL_LEVEL:-2}" >&2
    mkdir -p "$CACHE"
    cp "$work/build/bin/llama-server" "$BIN.tmp"
    mv "$BIN.tmp" "$BIN"
fi
echo "$BIN"
