#!/usr/bin/env bash
# A minimal Debian root with no Python, made once with debootstrap and cached as a tarball.
#
# Usage: build/debian-root.sh [--path] [--include PKG,PKG...] [SUITE] [VARIANT]
#                                                              (default: bookworm minbase)
# Prints the tarball's path, $PACKER_ROOTS_DIR/debian-SUITE-VARIANT-amd64.tar.gz (default dir
# ~/.cache/packer/roots); --path only prints it. A cached tarball is reused as is, so only the
# first run downloads (minbase: 1-5 min by load, about 40 MB of .debs, a 50 MB tarball).
# tests/test_noinstall.py unpacks it and runs model.run inside it with chroot.
#
# --include adds those packages (debootstrap --include) and their name to the tarball's:
# debian-SUITE-VARIANT+PKG+PKG-amd64.tar.gz. Such a root may have Python (the plain one must
# not); tests/test_install.py installs the packer wheel in `--include python3,python3-venv`.
# Every root, plain or not, is refused when it has a compiler or a build tool (cc, gcc, g++,
# clang, cmake, make, ld...): what runs in it is proven to need none.
#
# Needs root and debootstrap (build/system-deps.sh installs it). Env: DEBIAN_MIRROR
# (default http://deb.debian.org/debian; suites older than bullseye live on
# http://archive.debian.org/debian).
set -euo pipefail

only_path=0
include=
while [[ ${1:-} == --* ]]; do
    case $1 in
    --path) only_path=1 ;;
    --include)
        include=${2:?--include needs a comma-separated package list}
        shift
        ;;
    *)
        echo "debian-root.sh: unknown option $1" >&2
        exit 2
        ;;
    esac
    shift
done
if [[ -n $include && ! $include =~ ^[a-z0-9][a-z0-9.+-]*(,[a-z0-9][a-z0-9.+-]*)*$ ]]; then
    echo "debian-root.sh: --include takes Debian package names separated by commas: $include" >&2
    exit 2
fi
suite=${1:-bookworm}
variant=${2:-minbase}
arch=amd64
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
dir=${PACKER_ROOTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/packer/roots}
name=$variant${include:++${include//,/+}}
tarball="$dir/debian-$suite-$name-$arch.tar.gz"

if [[ $only_path == 1 || -s $tarball ]]; then
    echo "$tarball"
    exit 0
fi
if [[ $(id -u) != 0 ]]; then
    echo "debian-root.sh: debootstrap needs root: run it as root (sudo $0 $suite $variant)" >&2
    exit 2
fi
if ! command -v debootstrap >/dev/null; then
    echo "debian-root.sh: debootstrap not found: run build/system-deps.sh" \
        "(apt-get install debootstrap)" >&2
    exit 2
fi

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9 # another process may be making the same root: wait, then reuse its tarball
if [[ -s $tarball ]]; then
    echo "$tarball"
    exit 0
fi

work=$(mktemp -d "$dir/.make-$suite-XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
start=$SECONDS
echo "debian-root.sh: debootstrap --variant=$variant${include:+ --include=$include} $suite" \
    "from $mirror (once; cached in $dir)" >&2
if ! debootstrap --variant="$variant" ${include:+--include="$include"} --arch="$arch" \
    "$suite" "$root" "$mirror" >"$work/log" 2>&1; then
    tail -n 5 "$work/log" >&2
    echo "debian-root.sh: debootstrap $suite failed (is $mirror reachable?); full log above" >&2
    exit 1
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

# The point of the plain root: nothing Python in it.
if [[ -z $include ]]; then
    found=$(find "$root" \( -name 'python[0-9]*' -o -name 'libpython*' \) -print -quit)
    if [[ -n $found ]] || chroot "$root" /bin/sh -c 'command -v python3 || command -v python'
    then
        echo "debian-root.sh: the $suite $variant root contains Python (${found#"$root"})" >&2
        exit 1
    fi
fi
# Of every root: no compiler nor build tool on any usual PATH folder.
tools=(cc c++ gcc g++ cpp clang clang++ cmake make gmake ninja ld as)
for bin in usr/local/sbin usr/local/bin usr/sbin usr/bin sbin bin; do
    for tool in "${tools[@]}"; do
        for f in "$root/$bin/$tool" "$root/$bin/$tool"-[0-9]* "$root/$bin"/*-linux-gnu-"$tool"; do
            if [[ -e $f || -L $f ]]; then
                echo "debian-root.sh: the $suite $name root has a build tool: /${f#"$root"/}" >&2
                exit 1
            fi
        done
    done
done

tar --numeric-owner -C "$root" -czf "$work/root.tar.gz" .
mv "$work/root.tar.gz" "$tarball"
glibc=$(chroot "$root" /usr/bin/ldd --version)
glibc=${glibc%%$'\n'*}
echo "debian-root.sh: $tarball: $(du -sm "$root" | cut -f1) MB unpacked," \
    "$(du -m "$tarball" | cut -f1) MB packed, $((SECONDS - start)) s, glibc ${glibc##* }" >&2
echo "$tarball"
