#!/usr/bin/env bash
# Build (once) and install the llama-cpp-python wheel the packer runtime is made from.
#
# The wheel is cached under a key that includes the version AND the CMake flags: pip's own
# wheel cache ignores CMAKE_ARGS, so a wheel compiled with other flags (say -march=native)
# could otherwise be silently reused, and that one crashes on older CPUs.
#
# Usage: build/llama-wheel.sh [PYTHON]        (default: python3 on PATH)
# Env:   PACKER_WHEEL_CACHE   cache folder (default ~/.cache/packer/wheels)
#        LLAMA_CPP_VERSION    llama-cpp-python version (default pinned below)
set -euo pipefail

PY=${1:-python3}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
# Portable CPU build: no -march=native (GGML_NATIVE=OFF keeps the AVX/AVX2/FMA/F16C baseline),
# no curl, no llava/mtmd (we never load images).
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
PYTAG=$("$PY" -c 'import sys,platform; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')
KEY=$(printf '%s\n%s\n%s\n' "$VERSION" "$CMAKE_FLAGS" "$PYTAG" | sha256sum | cut -c1-16)
CACHE=${PACKER_WHEEL_CACHE:-$HOME/.cache/packer/wheels}/llama-cpp-python-$VERSION-$KEY

if ! ls "$CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $VERSION ($CMAKE_FLAGS); this takes a while on 2 cores" >&2
    tmp=$(mktemp -d "${CACHE%/*}/.build-XXXXXX" 2>/dev/null || { mkdir -p "${CACHE%/*}"; mktemp -d "${CACHE%/*}/.build-XXXXXX"; })
    trap 'rm -rf "$tmp"' EXIT
    CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$PY" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -w "$tmp" >&2
    printf '%s\n' "$CMAKE_FLAGS" >"$tmp/CMAKE_ARGS"
    rm -rf "$CACHE" && mv "$tmp" "$CACHE"
    trap - EXIT
else
    echo "using cached llama-cpp-python wheel: $CACHE" >&2
fi
"$PY" -m pip install --no-deps --force-reinstall --quiet "$CACHE"/llama_cpp_python-*.whl
# its pure-Python dependencies
"$PY" -m pip install --quiet "typing-extensions>=4.5" "numpy>=1.20" "diskcache>=5.6.1" "jinja2>=2.11.3"
echo "$CACHE"
