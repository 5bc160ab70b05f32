#!/usr/bin/env bash
# Build (once) and install ggml's CPU variant libraries compiled by the build root's compiler
# wrapper (build/root-cc) as it is now, over the ones in the installed llama-cpp-python wheel.
#
# Why: the wheel is cached by a key that does not see root-cc, and compiling the wheel again
# takes over an hour (mostly Vulkan shaders), while root-cc changed three times for speed (#16
# item 7, #18 item 5): gcc 10's default tuning split unaligned 256-bit AVX loads and stores in
# two (5-7 % of prompt and `packer eval` speed on the demo model); gcc 10's code for sse42 ran
# prompts 18 % slower than llama.cpp's own gcc 12 build, so it goes to clang 16; and the AVX-512
# variants without AMX, alderlake and the AVX variants without AVX2 (sandybridge, ivybridge,
# piledriver) go to gcc 12 (with OpenMP, as llama.cpp's build). With GGML_BACKEND_DL every CPU
# variant is its own library that talks to the rest only through libggml-base, so the variants
# root-cc compiles differently from before are compiled here on their own from the same
# vendored llama.cpp (same patches), by the same wrapper, in the same root: a few minutes on 2
# cores. x64 (no SIMD flags: nothing changes) and the wheel's
# sapphirerapids (clang already) are left as they are.
#
# Cached by its own key (llama-cpp-python version, root-cc's text, the variant list, where it
# is compiled, the root's gcc 12 packages, the patches and the digest of the libggml-base.so
# they link against) under
# ~/.cache/packer/wheels/ggml-cpu-*. Installed into PYTHON's llama_cpp/lib and the build root's
# (packer/stub.py freezes the runtime from the root). A wheel compiled on the build machine
# (no root) is left alone: its compiler is the machine's own.
#
# Usage: build/llama-cpu-variants.sh [--print-cache] [PYTHON]
#          PYTHON         the interpreter whose llama_cpp/lib gets them (default: python3); its
#                         llama-cpp-python must already be installed (build/llama-wheel.sh)
#          --print-cache  print the cache folder and stop (builds nothing)
# Env:   PACKER_WHEEL_CACHE          cache folder (default ~/.cache/packer/wheels), shared
#        LLAMA_CPP_VERSION           as for build/llama-wheel.sh
#        CMAKE_BUILD_PARALLEL_LEVEL  compile jobs (default 2); the compile runs under `nice`
set -euo pipefail

PY=python3
PRINT_CACHE=0
HERE=$(cd "$(dirname "$0")" && pwd)
while (($#)); do
    case $1 in
        --print-cache) PRINT_CACHE=1; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "llama-cpu-variants.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
        *) PY=$1; shift ;;
    esac
done
die() { echo "llama-cpu-variants.sh: $*" >&2; exit 1; }
VERSION=${LLAMA_CPP_VERSION:-$(sed -n 's/^VERSION=\${LLAMA_CPP_VERSION:-\(.*\)}$/\1/p' "$HERE/llama-wheel.sh")}
[[ -n $VERSION ]] || die "could not read the version from llama-wheel.sh"
# ggml's x86-64 variants (GGML_CPU_ALL_VARIANTS) but x64 and sapphirerapids
VARIANTS=(sse42 sandybridge ivybridge piledriver haswell skylakex cannonlake cascadelake icelake
    cooperlake zen4 alderlake)

BASE=$(bash "$HERE/llama-wheel.sh" --print-base "$PY")
if [[ $BASE == host ]]; then
    echo "llama-cpu-variants.sh: the wheel was compiled on this machine, not in the build root:" \
        "its CPU variants are left as they are" >&2
    exit 0
fi
[[ $(uname -m) == x86_64 ]] || { echo "llama-cpu-variants.sh: not x86-64: nothing to do" >&2; exit 0; }
LIBDIR=$("$PY" -c 'import importlib.util, os; s = importlib.util.find_spec("llama_cpp")
print(os.path.join(os.path.dirname(s.origin), "lib") if s else "")')
[[ -n $LIBDIR && -e $LIBDIR/libggml-base.so ]] ||
    die "$PY has no llama-cpp-python with libggml-base.so: run build/llama-wheel.sh first"
shopt -s nullglob
PATCHES=("$HERE/patches/$VERSION"/*.patch)
shopt -u nullglob
root_dir=$(bash "$HERE/build-root.sh" --path)
((PRINT_CACHE)) || root_dir=$(bash "$HERE/build-root.sh") # a root made before gcc 12 gets it
gcc12=$(cat "$root_dir/opt/gcc-12/VERSIONS" 2>/dev/null || echo none)
KEY_PARTS=("$VERSION" "$(sha256sum <"$HERE/root-cc" | cut -c1-64)" "${VARIANTS[*]}" "$BASE"
    "$(sha256sum <"$LIBDIR/libggml-base.so" | cut -c1-64)" "$gcc12")
((${#PATCHES[@]})) && KEY_PARTS+=("$(cat "${PATCHES[@]}" | sha256sum | cut -c1-64)")
KEY=$(printf '%s\n' "${KEY_PARTS[@]}" | sha256sum | cut -c1-16)
CACHE=${PACKER_WHEEL_CACHE:-$HOME/.cache/packer/wheels}/ggml-cpu-$VERSION-$KEY
if ((PRINT_CACHE)); then
    echo "$CACHE"
    exit 0
fi

if [[ ! -f $CACHE/VARIANTS ]]; then
    mkdir -p "${CACHE%/*}"
    work=$(mktemp -d "${CACHE%/*}/.cpu-XXXXXX")
    stage=$root_dir/work/llama-cpu
    trap 'rm -rf "$work" "$stage"' EXIT
    echo "llama-cpu-variants.sh: compiling ${#VARIANTS[@]} CPU variants ($VERSION, in: $BASE)" >&2
    start=$SECONDS
    "$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -d "$work" >&2
    tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
    for patch_file in "${PATCHES[@]}"; do
        patch --quiet --forward -p1 -d "$work/llama_cpp_python-$VERSION" <"$patch_file" >&2
    done
    rm -rf "$stage" && mkdir -p "$stage"
    mv "$work/llama_cpp_python-$VERSION/vendor/llama.cpp" "$stage/src"
    install -m 755 "$HERE/root-cc" "$root_dir/usr/local/bin/packer-cc"
    install -m 755 "$HERE/root-cc" "$root_dir/usr/local/bin/packer-c++"
    targets=$(printf 'ggml-cpu-%s ' "${VARIANTS[@]}")
    # the wheel's configuration as far as the CPU libraries go (llama-wheel.sh's CMAKE_FLAGS)
    cat >"$stage/compile.sh" <<EOF
set -e
cd /work/llama-cpu
cmake -S src -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER=packer-cc \\
    -DCMAKE_CXX_COMPILER=packer-c++ -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON \\
    -DGGML_CPU_ALL_VARIANTS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \\
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
nice -n 10 cmake --build build -j ${CMAKE_BUILD_PARALLEL_LEVEL:-2} --target $targets
EOF
    bash "$HERE/build-root.sh" --run bash /work/llama-cpu/compile.sh >&2
    mkdir -p "$work/out"
    for v in "${VARIANTS[@]}"; do
        lib=$stage/build/bin/libggml-cpu-$v.so
        [[ -f $lib ]] || die "the build made no libggml-cpu-$v.so; not caching"
        # the entry points ggml_backend_load() looks for
        symbols=$(objdump -T "$lib")
        grep -qw ggml_backend_init <<<"$symbols" || die "libggml-cpu-$v.so has no ggml_backend_init; not caching"
        cp "$lib" "$work/out/"
    done
    printf '%s\n' "${VARIANTS[@]}" >"$work/out/VARIANTS"
    rm -rf "$CACHE" && mv "$work/out" "$CACHE"
    echo "llama-cpu-variants.sh: compiled in $((SECONDS - start)) s" >&2
else
    echo "using cached CPU variants: $CACHE" >&2
fi

root_lib=$(bash "$HERE/build-root.sh" --run python3 -c 'import importlib.util, os
s = importlib.util.find_spec("llama_cpp"); print(os.path.join(os.path.dirname(s.origin), "lib") if s else "")')
[[ -n $root_lib ]] || die "the build root's Python has no llama-cpp-python"
while read -r v; do
    install -m 755 "$CACHE/libggml-cpu-$v.so" "$LIBDIR/libggml-cpu-$v.so"
    install -m 755 "$CACHE/libggml-cpu-$v.so" "$root_dir$root_lib/libggml-cpu-$v.so"
done <"$CACHE/VARIANTS"
echo "$CACHE"
