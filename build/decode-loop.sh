#!/usr/bin/env bash
# Compile and install packer's decode loop, libpacker-decode.so, next to libllama.so.
#
# build/decode_loop.c is one small C file against llama.h (packer/runtime/decode_loop.py says
# why it exists): it is compiled where the wheel was (build/llama-wheel.sh --print-base), so
# inside the Debian 11 build root (glibc 2.31) with the root's C compiler, the llama.h the
# wheel installed there and its libllama.so, and then installed into the root's llama_cpp/lib
# (the runtime stub freezes that folder whole, packer/templates/runtime.spec) and into
# PYTHON's. With a wheel compiled on this machine, it is compiled with this machine's `cc`.
# A second or two: not cached.
#
# Usage: build/decode-loop.sh [PYTHON]
#        build/decode-loop.sh --into SITE
#          PYTHON       the interpreter whose llama_cpp/lib gets it (default: python3); its
#                       llama-cpp-python must already be installed (build/llama-wheel.sh)
#          --into SITE  a folder a flavour's wheel was installed into (pip --target, see
#                       packer/stub.py): compiled with this machine's `cc`, as that wheel was
set -euo pipefail

PY=python3
SITE=
HERE=$(cd "$(dirname "$0")" && pwd)
while (($#)); do
    case $1 in
        --into) SITE=${2:?--into needs a folder}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "decode-loop.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
        *) PY=$1; shift ;;
    esac
done
die() { echo "decode-loop.sh: $*" >&2; exit 1; }
LIBRARY=libpacker-decode.so
# the folder of llama_cpp's libraries and the include folder the wheel installs llama.h into
FIND_DIRS='import importlib.util, os, sysconfig
s = importlib.util.find_spec("llama_cpp")
print(os.path.join(os.path.dirname(s.origin), "lib") if s else "")
print(os.path.join(sysconfig.get_paths()["purelib"], "include"))'
# shellcheck disable=SC2016  # $ORIGIN is for the dynamic loader
COMPILE='cc -std=c99 -O2 -Wall -Wextra -Werror -fPIC -shared -I"$2" -o "$3" "$4" -L"$1" -lllama \
    -Wl,-rpath,\$ORIGIN -Wl,--no-undefined'

if [[ -n $SITE ]]; then
    LIBDIR=$SITE/llama_cpp/lib INCLUDE=$SITE/include BASE=host
    [[ -e $LIBDIR/libllama.so ]] || die "no llama_cpp/lib/libllama.so in $SITE"
else
    { read -r LIBDIR; read -r INCLUDE; } < <("$PY" -c "$FIND_DIRS")
    [[ -n $LIBDIR && -e $LIBDIR/libllama.so ]] ||
        die "$PY has no llama-cpp-python with libllama.so: run build/llama-wheel.sh first"
    BASE=$(bash "$HERE/llama-wheel.sh" --print-base "$PY")
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [[ $BASE == host ]]; then
    [[ -f $INCLUDE/llama.h ]] || die "no llama.h in $INCLUDE (the wheel installs it there)"
    bash -c "$COMPILE" _ "$LIBDIR" "$INCLUDE" "$work/$LIBRARY" "$HERE/decode_loop.c" >&2
    install -m 755 "$work/$LIBRARY" "$LIBDIR/$LIBRARY"
else # inside the Debian 11 root: its glibc 2.31 and its copy of the wheel, like the wheel
    root_dir=$(bash "$HERE/build-root.sh")
    { read -r root_lib; read -r root_include; } < <(
        bash "$HERE/build-root.sh" --run python3 -c "$FIND_DIRS")
    [[ -n $root_lib && -e $root_dir$root_lib/libllama.so ]] ||
        die "the build root's Python has no llama-cpp-python"
    stage=$root_dir/work/decode-loop
    rm -rf "$stage" && mkdir -p "$stage"
    trap 'rm -rf "$work" "$stage"' EXIT
    cp "$HERE/decode_loop.c" "$stage/"
    bash "$HERE/build-root.sh" --run bash -c "$COMPILE" _ "$root_lib" "$root_include" \
        "/work/decode-loop/$LIBRARY" /work/decode-loop/decode_loop.c >&2
    install -m 755 "$stage/$LIBRARY" "$root_dir$root_lib/$LIBRARY"
    install -m 755 "$stage/$LIBRARY" "$LIBDIR/$LIBRARY"
fi
# the entry points packer/runtime/decode_loop.py binds
symbols=$(objdump -T "$LIBDIR/$LIBRARY")
for name in packer_decode_abi packer_decode_argmax packer_decode_run; do
    grep -qw "$name" <<<"$symbols" || die "the compiled $LIBRARY has no $name"
done
echo "$LIBDIR/$LIBRARY"
