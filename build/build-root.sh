#!/usr/bin/env bash
# The old Debian root the portable runtime is compiled and frozen in (#5 item 4: glibc baseline).
#
# A program linked on a machine runs on that glibc or newer, never older. model.run bundles
# Python, libstdc++ and llama.cpp, so they are built here, in Debian 11 (bullseye, glibc 2.31 =
# Ubuntu 20.04), not on the build machine. The root holds:
#   - Debian 11's gcc 10 (every library and Python itself), and for some of ggml's CPU variant
#     libraries (see build/root-cc) clang 16 and Debian 12's gcc 12 (the compiler llama.cpp's
#     speed is measured with here), the latter in /opt/gcc-12 with Debian 12's binutils and
#     libc, run through that libc's own dynamic loader; they compile against the root's headers
#     and link with its gcc 10, so the libraries still need only glibc 2.31,
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

GCC12=$DIR/opt/gcc-12
made() { [[ -f $READY && -f $GCC12/VERSIONS ]]; } # gcc 12 came later: roots made before get it
if made; then
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
if made; then
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
if [[ ! -x $DIR/usr/bin/clang-16 ]]; then
    step "apt-get install clang-16"
    run_in_root "$DIR" bash -c 'export DEBIAN_FRONTEND=noninteractive;
        apt-get -q update && apt-get -q install -y --no-install-recommends clang-16 &&
        apt-get clean' >>"$log" 2>&1 || fail "apt-get install clang-16"
fi

# Download Debian SUITE's packages PKG... (no dependencies resolved) into the empty folder
# DEST, with this machine's apt but none of its sources or installed packages.
fetch_debs() {
    local suite=$1 dest=$2 apt=$DIR/work/apt-$1
    shift 2
    rm -rf "$apt" && mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$dest"
    echo "deb $MIRROR $suite main" >"$apt/sources.list"
    : >"$apt/status"
    local opts=(-q -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o Dir::State::Lists="$apt/lists" -o Dir::State::status="$apt/status"
        -o Dir::Cache="$apt/cache" -o APT::Sandbox::User=root)
    { apt-get "${opts[@]}" update && (cd "$dest" && apt-get "${opts[@]}" download "$@"); } \
        >>"$log" 2>&1
    local rc=$?
    rm -rf "$apt"
    return $rc
}

# 2. glslc from Debian 13 (Debian 11 has none; Debian 12's predates the GLSL extensions ggml's
#    faster Vulkan shaders need: integer dot product, cooperative matrices), with Debian 13's
#    libc and libstdc++ next to it, run through Debian 13's dynamic loader given explicitly.
glslc_dir=$DIR/opt/glslc
if [[ ! -x $glslc_dir/glslc ]]; then
    step "fetching glslc from Debian 13"
    debs=$DIR/work/debs-trixie
    rm -rf "$debs"
    fetch_debs trixie "$debs" glslc libshaderc1 libc6 libstdc++6 libgcc-s1 ||
        fail "downloading glslc from Debian 13"
    for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$debs/x"; done
    rm -rf "$glslc_dir" && mkdir -p "$glslc_dir"
    lib=$debs/x/usr/lib/x86_64-linux-gnu
    cp -L "$debs/x/usr/bin/glslc" "$lib"/{libshaderc.so.1,libc.so.6,libm.so.6,libstdc++.so.6,libgcc_s.so.1} \
        "$glslc_dir/"
    cp -L "$lib/ld-linux-x86-64.so.2" "$glslc_dir/"
    rm -rf "$debs"
fi
printf '#!/bin/sh\nexec /opt/glslc/ld-linux-x86-64.so.2 --library-path /opt/glslc /opt/glslc/glslc "$@"\n' \
    >"$DIR/usr/local/bin/glslc"
chmod +x "$DIR/usr/local/bin/glslc"
run_in_root "$DIR" glslc --version >>"$log" 2>&1 || fail "glslc in the root"

# 2b. gcc 12 and binutils 2.40 from Debian 12, for the CPU variant libraries build/root-cc sends
#     to it. Debian 12's packages unpacked into /opt/gcc-12; every program in them is pointed
#     (patchelf: interpreter, DT_RPATH, which also covers the libraries they load) at Debian 12's
#     libc and loader next to them, so gcc's own subprocesses (cc1, as) run too. Not its
#     libstdc++ headers nor its libraries: root-cc compiles C++ against the root's gcc 10
#     headers and links with gcc 10, so nothing in the result needs more than the root has.
#     VERSIONS lists the packages (build/llama-cpu-variants.sh keys its cache on it).
if [[ ! -f $GCC12/VERSIONS ]]; then
    step "fetching gcc 12 from Debian 12"
    debs=$DIR/work/debs-bookworm
    rm -rf "$debs" "$GCC12" "$GCC12.tmp"
    fetch_debs bookworm "$debs" gcc-12 cpp-12 g++-12 libgcc-12-dev binutils-x86-64-linux-gnu \
        libbinutils libctf0 libctf-nobfd0 libjansson4 libisl23 libmpc3 libmpfr6 \
        libgmp10 libzstd1 zlib1g libc6 libstdc++6 libgcc-s1 || fail "downloading gcc 12 from Debian 12"
    for deb in "$debs"/*.deb; do
        dpkg-deb -x "$deb" "$GCC12.tmp"
        dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb" >>"$GCC12.tmp/VERSIONS.new"
    done
    rm -rf "$debs" "$GCC12.tmp/usr/share"
    ln -s ../../../../bin/x86_64-linux-gnu-as "$GCC12.tmp/usr/lib/gcc/x86_64-linux-gnu/12/as"
    # shellcheck disable=SC2016 # expanded inside the root
    run_in_root "$DIR" bash -c 'g=/opt/gcc-12; libs=$g/lib/x86_64-linux-gnu:$g/usr/lib/x86_64-linux-gnu
        for f in $g.tmp/usr/bin/* $g.tmp/usr/lib/gcc/x86_64-linux-gnu/12/*; do
            [[ -f $f && ! -L $f ]] && patchelf --print-interpreter "$f" >/dev/null 2>&1 || continue
            patchelf --set-interpreter $g/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 \
                --force-rpath --set-rpath "$libs" "$f" || exit 1
        done' >>"$log" 2>&1 || fail "patchelf on gcc 12"
    mv "$GCC12.tmp" "$GCC12"
    for tool in gcc g++; do # called by these names, like gcc-10 and clang-16
        printf '#!/bin/sh\nexec /opt/gcc-12/usr/bin/x86_64-linux-gnu-%s-12 "$@"\n' $tool \
            >"$DIR/usr/local/bin/$tool-12"
        chmod +x "$DIR/usr/local/bin/$tool-12"
    done
    printf '#include <immintrin.h>\n__m256i f(__m256i a, __m256i b, __m256i c) { return _mm256_dpbusd_avx_epi32(a, b, c); }\n' \
        >"$DIR/work/gcc12-check.c"
    run_in_root "$DIR" gcc-12 -O2 -mavxvnni -c \
        /work/gcc12-check.c -o /work/gcc12-check.o >>"$log" 2>&1 || {
        rm -rf "$GCC12"
        fail "gcc 12 in the root"
    }
    rm -f "$DIR"/work/gcc12-check.*
    mv "$GCC12/VERSIONS.new" "$GCC12/VERSIONS"
fi

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
