#!/usr/bin/env bash
# Build (once) and install ggml's RPC backend, libggml-rpc.so, next to the other backends.
#
# The llama-cpp-python wheel (build/llama-wheel.sh) is built without GGML_RPC, and rebuilding it
# takes most of an hour. With GGML_BACKEND_DL every backend is its own library that talks to the
# others only through libggml-base, so the RPC backend is compiled here on its own: the two
# source files of ggml/src/ggml-rpc from the same vendored llama.cpp (same patches), linked
# against the installed wheel's libggml-base.so, a minute on one core. It is installed into
# llama_cpp/lib, which the runtime stub freezes whole (packer/templates/runtime.spec), and is
# loaded only when --rpc or --rpc-server asks for it (packer/runtime/rpc.py).
#
# Cached by its own key (llama-cpp-python version, compile flags, where it is compiled, and the
# digest of the libggml-base.so it links against) under ~/.cache/packer/wheels/ggml-rpc-*.
# Compiled where the wheel was (build/llama-wheel.sh --print-base): inside the Debian 11 build
# root (glibc 2.31) when the wheel was, and then also installed into the root's Python, which
# freezes the runtime.
#
# Usage: build/llama-rpc.sh [--print-cache] [PYTHON]
#          PYTHON         the interpreter whose llama_cpp/lib gets it (default: python3); its
#                         llama-cpp-python must already be installed (build/llama-wheel.sh)
#          --print-cache  print the cache folder and stop (builds nothing)
# Env:   PACKER_WHEEL_CACHE   cache folder (default ~/.cache/packer/wheels), shared with the wheel
#        LLAMA_CPP_VERSION    as for build/llama-wheel.sh
set -euo pipefail

PY=python3
PRINT_CACHE=0
HERE=$(cd "$(dirname "$0")" && pwd)
while (($#)); do
    case $1 in
        --print-cache) PRINT_CACHE=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "llama-rpc.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
        *) PY=$1; shift ;;
    esac
done
VERSION=${LLAMA_CPP_VERSION:-$(sed -n 's/^VERSION=\${LLAMA_CPP_VERSION:-\(.*\)}$/\1/p' "$HERE/llama-wheel.sh")}
[[ -n $VERSION ]] || { echo "llama-rpc.sh: could not read the version from llama-wheel.sh" >&2; exit 1; }
# What ggml's CMake gives a backend library built with GGML_BACKEND_DL and shared libraries
CXXFLAGS="-std=c++17 -O2 -DNDEBUG -fPIC -pthread -DGGML_BACKEND_DL -DGGML_BACKEND_BUILD"
CXXFLAGS+=" -DGGML_BACKEND_SHARED -DGGML_SHARED -DGGML_BUILD"
SOURCES="ggml/src/ggml-rpc/ggml-rpc.cpp ggml/src/ggml-rpc/transport.cpp"

LIBDIR=$("$PY" -c 'import importlib.util, os; s = importlib.util.find_spec("llama_cpp")
print(os.path.join(os.path.dirname(s.origin), "lib") if s else "")')
[[ -n $LIBDIR && -e $LIBDIR/libggml-base.so ]] || {
    echo "llama-rpc.sh: $PY has no llama-cpp-python with libggml-base.so: run build/llama-wheel.sh first" >&2
    exit 1
}
BASE=$(bash "$HERE/llama-wheel.sh" --print-base "$PY")
shopt -s nullglob
PATCHES=("$HERE/patches/$VERSION"/*.patch)
shopt -u nullglob
KEY_PARTS=("$VERSION" "$CXXFLAGS" "$BASE" "$(sha256sum <"$LIBDIR/libggml-base.so" | cut -c1-64)")
((${#PATCHES[@]})) && KEY_PARTS+=("$(cat "${PATCHES[@]}" | sha256sum | cut -c1-64)")
KEY=$(printf '%s\n' "${KEY_PARTS[@]}" | sha256sum | cut -c1-16)
CACHE=${PACKER_WHEEL_CACHE:-$HOME/.cache/packer/wheels}/ggml-rpc-$VERSION-$KEY
if ((PRINT_CACHE)); then
    echo "$CACHE"
    exit 0
fi

unpack_ggml() { # the vendored ggml of llama-cpp-python VERSION, patched, into folder $1
    local out=$1 tmp patch_file
    tmp=$(mktemp -d)
    "$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" \
        -d "$tmp" >&2
    tar -xzf "$tmp/llama_cpp_python-$VERSION.tar.gz" -C "$tmp"
    for patch_file in "${PATCHES[@]}"; do
        patch --quiet --forward -p1 -d "$tmp/llama_cpp_python-$VERSION" <"$patch_file" >&2
    done
    mkdir -p "$out"
    cp -a "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp/ggml" "$out/"
    rm -rf "$tmp"
}

if [[ ! -f $CACHE/libggml-rpc.so ]]; then
    mkdir -p "${CACHE%/*}"
    work=$(mktemp -d "${CACHE%/*}/.rpc-XXXXXX")
    trap 'rm -rf "$work"' EXIT
    echo "llama-rpc.sh: compiling ggml's RPC backend ($VERSION, in: $BASE)" >&2
    start=$SECONDS
    unpack_ggml "$work/src"
    cp -L "$LIBDIR/libggml-base.so" "$work/src/"
    # shellcheck disable=SC2016  # $ORIGIN is for the dynamic loader
    printf 'set -e\ncd "$(dirname "$0")"\nnice -n 10 c++ %s -Iggml/include -Iggml/src -shared %s\n' \
        "$CXXFLAGS" '-o libggml-rpc.so '"$SOURCES"' -L. -lggml-base -Wl,-rpath,\$ORIGIN -Wl,--no-undefined' \
        >"$work/src/compile.sh"
    if [[ $BASE == host ]]; then
        bash "$work/src/compile.sh" >&2
    else # inside the Debian 11 root: links against its glibc 2.31, like the wheel
        root_dir=$(bash "$HERE/build-root.sh")
        stage=$root_dir/work/llama-rpc
        rm -rf "$stage" && cp -a "$work/src" "$stage"
        bash "$HERE/build-root.sh" --run bash /work/llama-rpc/compile.sh >&2
        mv "$stage/libggml-rpc.so" "$work/src/"
        rm -rf "$stage"
    fi
    # the entry point ggml_backend_load() looks for
    symbols=$(objdump -T "$work/src/libggml-rpc.so")
    grep -qw ggml_backend_init <<<"$symbols" || {
        echo "llama-rpc.sh: the compiled libggml-rpc.so has no ggml_backend_init; not caching it" >&2
        exit 1
    }
    mkdir -p "$work/out"
    mv "$work/src/libggml-rpc.so" "$work/out/"
    printf '%s\n' "$CXXFLAGS" "compiled in: $BASE" >"$work/out/FLAGS"
    rm -rf "$CACHE" && mv "$work/out" "$CACHE"
    echo "llama-rpc.sh: compiled in $((SECONDS - start)) s" >&2
else
    echo "using cached ggml RPC backend: $CACHE" >&2
fi

install -m 755 "$CACHE/libggml-rpc.so" "$LIBDIR/libggml-rpc.so"
if [[ $BASE != host ]]; then # the root's Python freezes the runtime (packer/stub.py): it too
    root_dir=$(bash "$HERE/build-root.sh")
    root_lib=$(bash "$HERE/build-root.sh" --run python3 -c 'import importlib.util, os
s = importlib.util.find_spec("llama_cpp"); print(os.path.join(os.path.dirname(s.origin), "lib") if s else "")')
    [[ -n $root_lib ]] || { echo "llama-rpc.sh: the build root's Python has no llama-cpp-python" >&2; exit 1; }
    install -m 755 "$CACHE/libggml-rpc.so" "$root_dir$root_lib/libggml-rpc.so"
fi
echo "$CACHE"
