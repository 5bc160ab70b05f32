#!/usr/bin/env bash
# The old Debian root the portable runtime is compiled and frozen in (#5 item 4: glibc baseline).
#
# A program linked on a machine runs on that glibc or newer, never older. model.run bundles
# Python, libstdc++ and llama.cpp, so they are built here, in Debian 11 (bullseye, glibc 2.31 =
# Ubuntu 20.04), not on the build machine. The root holds:
#   - Debian 11's gcc 10 (every library and Python itself) and clang 16 (only for the two ggml
#     CPU variants gcc 10 cannot compile: alderlake needs -mavxvnni, sapphirerapids AMX; see
#     build/root-cc),
#   - CPython 3.11 compiled from Debian's upstream tarball into /opt/python (Debian 11 only has
#     3.9), with PyInstaller and the runtime's Python dependencies,
#   - Debian 13's glslc (Vulkan shader compiler; Debian 11 has none, Debian 12's is too old for
#     ggml's integer-dot and cooperative-matrix shaders) with its own libc, run through its own
#     dynamic loader; build/llama-wheel.sh adds newer Vulkan and SPIR-V headers.
# Made once (about 10 min: debootstrap 1 min, apt 2 min, CPython 5 min) and kept, unpacked, in
# $PACKER_ROOTS_DIR/build-bullseye-amd64-vN (default dir ~/.cache/packer/roots, about 1.5 GB).
#
# Usage: build/build-root.sh                make the root if missing; print its folder
#        build/build-root.sh --path         print the folder only (made or not)
#        build/build-root.sh --ready        exit 0 if the root is made, 1 if not
#        build/build-root.sh --run CMD...   run CMD inside the root (chroot in a private mount
#                                           namespace with /proc and /dev; /work is the root's
#                                           scratch folder)
# Needs root (debootstrap, chroot), debootstrap and network access to deb.debian.org and PyPI.
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

ROOT_VERSION=1 # bump when what the root contains changes: a new folder is made
SUITE=bullseye
PY_VERSION=3.11.2
PY_TARBALL=python3.11_$PY_VERSION.orig.tar.gz # = python.org's Python-3.11.2.tgz, from Debian 12
PY_SHA256=2411c74bda5bbcfcddaf4531f66d1adc73f247f529aee981b029513aefdbf849
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DIR=${PACKER_ROOTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/packer/roots}/build-$SUITE-amd64-v$ROOT_VERSION
READY=$DIR/opt/packer-build-root.ready
HERE=$(cd "$(dirname "$0")" && pwd)

die() {
    echo "build-root.sh: $*" >&2
    exit 1
}

run_in_root() { # chroot into the root in a private mount namespace: mounts vanish with it
    local root=$1 pass=() var
    shift
    mkdir -p "$root/work"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    # This machine's CA bundle and package-index settings (a proxy with its own CA, a mirror)
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/build-host-ca.crt"
        for var in PIP_CERT SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE; do
            pass+=("$var=/etc/ssl/certs/build-host-ca.crt")
        done
    fi
    for var in PIP_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT http_proxy https_proxy \
        no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [[ -n ${!var:-} ]] && pass+=("$var=${!var}")
    done
    unshare --mount --propagation private -- bash -c '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
            PATH=/opt/python/bin:/usr/local/bin:/usr/bin:/bin PIP_DISABLE_PIP_VERSION_CHECK=1 \
            "$@"' run_in_root "$root" "${pass[@]}" "$@"
}

case ${1:-} in
    --path)
        echo "$DIR"
        exit 0
        ;;
    --ready) [[ -f $READY ]] && exit 0 || exit 1 ;;
    --run)
        shift
        [[ -f $READY ]] || die "the build root is not made: run build/build-root.sh first"
        run_in_root "$DIR" "$@"
        exit
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *) die "unknown option $1 (try --help)" ;;
esac

if [[ -f $READY ]]; then
    echo "$DIR"
    exit 0
fi
[[ $(id -u) == 0 ]] || die "making the build root needs root (debootstrap, chroot): run it as root"
for tool in debootstrap unshare chroot curl sha256sum apt-get dpkg-deb; do
    command -v $tool >/dev/null || die "$tool not found: run build/system-deps.sh"
done

mkdir -p "${DIR%/*}"
exec 9>"${DIR%/*}/.lock-build-root"
flock 9 # another build may be making the same root: wait, then use it
if [[ -f $READY ]]; then
    echo "$DIR"
    exit 0
fi
start=$SECONDS
log=${DIR%/*}/build-root.log
: >"$log"
step() { echo "build-root.sh: $* ($((SECONDS - start)) s)" >&2; }
fail() {
    tail -n 15 "$log" >&2
    die "$* failed; the log above is the end of $log"
}

# 1. Debian 11 with the compilers and the headers Python and llama.cpp need.
if [[ ! -f $DIR/opt/packer-build-root.debootstrap ]]; then
    rm -rf "$DIR"
    step "debootstrap $SUITE into $DIR (once)"
    debootstrap --variant=minbase --arch=amd64 \
        --include=build-essential,ca-certificates,xz-utils,libffi-dev,zlib1g-dev,libssl-dev,libbz2-dev,liblzma-dev,libsqlite3-dev,uuid-dev,libvulkan-dev,spirv-headers,patchelf,file \
        "$SUITE" "$DIR" "$MIRROR" >>"$log" 2>&1 || fail "debootstrap"
    touch "$DIR/opt/packer-build-root.debootstrap"
fi
step "apt-get install clang-16"
run_in_root "$DIR" bash -c 'export DEBIAN_FRONTEND=noninteractive;
    apt-get -q update && apt-get -q install -y --no-install-recommends clang-16 &&
    apt-get clean' >>"$log" 2>&1 || fail "apt-get install clang-16"

# 2. glslc from Debian 13 (Debian 11 has none; Debian 12's predates the GLSL extensions ggml's
#    faster Vulkan shaders need: integer dot product, cooperative matrices), with Debian 13's
#    libc and libstdc++ next to it, run through Debian 13's dynamic loader given explicitly.
glslc_dir=$DIR/opt/glslc
if [[ ! -x $glslc_dir/glslc ]]; then
    step "fetching glslc from Debian 13"
    apt=$DIR/work/apt-trixie
    rm -rf "$apt" && mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
    echo "deb $MIRROR trixie main" >"$apt/sources.list"
    opts=(-q -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache" -o APT::Sandbox::User=root)
    { apt-get "${opts[@]}" update && (cd "$apt/debs" &&
        apt-get "${opts[@]}" download glslc libshaderc1 libc6 libstdc++6 libgcc-s1); } \
        >>"$log" 2>&1 || fail "downloading glslc from Debian 13"
    for deb in "$apt"/debs/*.deb; do dpkg-deb -x "$deb" "$apt/x"; done
    rm -rf "$glslc_dir" && mkdir -p "$glslc_dir"
    lib=$apt/x/usr/lib/x86_64-linux-gnu
    cp -L "$apt/x/usr/bin/glslc" "$lib"/{libshaderc.so.1,libc.so.6,libm.so.6,libstdc++.so.6,libgcc_s.so.1} \
        "$glslc_dir/"
    cp -L "$apt"/x/usr/lib64/ld-linux-x86-64.so.2 "$glslc_dir/" 2>/dev/null ||
        cp -L "$lib/ld-linux-x86-64.so.2" "$glslc_dir/"
    rm -rf "$apt"
fi
printf '#!/bin/sh\nexec /opt/glslc/ld-linux-x86-64.so.2 --library-path /opt/glslc /opt/glslc/glslc "$@"\n' \
    >"$DIR/usr/local/bin/glslc"
chmod +x "$DIR/usr/local/bin/glslc"
run_in_root "$DIR" glslc --version >>"$log" 2>&1 || fail "glslc in the root"

# 3. CPython, shared (PyInstaller bundles libpython), with its rpath so it runs from /opt/python.
if [[ ! -x $DIR/opt/python/bin/python3 ]]; then
    step "compiling CPython $PY_VERSION (about 5 min)"
    src=$DIR/work/cpython
    rm -rf "$src" && mkdir -p "$src"
    curl -fsSL -o "$src/$PY_TARBALL" "$MIRROR/pool/main/p/python3.11/$PY_TARBALL" ||
        die "could not download $MIRROR/pool/main/p/python3.11/$PY_TARBALL"
    echo "$PY_SHA256  $src/$PY_TARBALL" | sha256sum -c --quiet - || die "$PY_TARBALL: wrong sha256"
    tar -xzf "$src/$PY_TARBALL" -C "$src" --strip-components=1
    run_in_root "$DIR" bash -c "cd /work/cpython &&
        ./configure --prefix=/opt/python --enable-shared --with-ensurepip=install \
            LDFLAGS=-Wl,-rpath,/opt/python/lib >/dev/null &&
        nice make -j$(nproc) >/dev/null && make install >/dev/null" >>"$log" 2>&1 ||
        fail "compiling CPython"
    rm -rf "$src"
fi
run_in_root "$DIR" python3 -c 'import ctypes, ssl, sqlite3, lzma, bz2, zlib, uuid' >>"$log" 2>&1 ||
    fail "the root's Python lacks a standard module"

# 4. PyInstaller and what the frozen runtime imports besides llama-cpp-python (whose wheel
#    build/llama-wheel.sh compiles here and installs), pinned: the frozen runtime is reproducible;
#    and cmake for that compile.
PINS=(pyinstaller==6.22.3 numpy==2.4.6 zstandard==0.25.0 typing-extensions==4.16.0
    diskcache==5.6.3 jinja2==3.1.6 "cmake>=3.21")
step "pip install ${PINS[*]}"
run_in_root "$DIR" python3 -m pip install --quiet --no-warn-script-location "${PINS[@]}" \
    >>"$log" 2>&1 || fail "pip install in the root"

glibc=$(run_in_root "$DIR" ldd --version | sed -n 1p)
echo "$SUITE ${glibc##* } python $PY_VERSION ${PINS[*]}" >"$READY"
step "ready: $DIR (glibc ${glibc##* })"
echo "$DIR"
