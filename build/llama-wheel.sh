#!/usr/bin/env bash
# Build (once) and install the llama-cpp-python wheel the packer runtime is made from.
#
# The wheel runs on every x86-64 CPU: ggml is built with GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS,
# so the CPU code is compiled once per instruction-set level (libggml-cpu-x64.so, -sse42,
# -sandybridge, -haswell, -skylakex, -icelake, -alderlake, ...) and ggml picks the best one the
# running CPU supports at start. GPU backends are separate libraries loaded the same way
# (libggml-vulkan.so; libggml-cuda.so in the cuda flavour); when one fails to load (no libvulkan,
# no driver) the runtime falls back to the CPU (runtime/backend.py).
#
# The wheel is cached under a key that includes the version, the flavour's CMake flags and the
# Python tag: pip's own wheel cache ignores CMAKE_ARGS, so a wheel compiled with other flags
# (say -march=native) could otherwise be silently reused, and that one crashes on older CPUs.
#
# Patches: build/patches/VERSION/*.patch are our own fixes to the vendored llama.cpp, applied to
# the unpacked sdist (ggml-amx-tile-config.patch: ggml's AMX kernels died of SIGILL when another
# library on the thread released the tiles, and gcc builds loaded an empty tile configuration).
#
# Where it is compiled decides the oldest glibc model.run runs on (#5 item 4). The cpu flavour is
# compiled inside the Debian 11 build root (build/build-root.sh: gcc 10, glibc 2.31), whose
# Python freezes the runtime too; the wheel also installs and runs on the newer build machine.
# Without root (no chroot) it is compiled on the build machine instead, and model.run then needs
# that machine's glibc. The cuda flavour is always compiled on the build machine (the CUDA
# toolkit is not in the root).
#
# Usage: build/llama-wheel.sh [--flavour cpu|cuda] [--build-only | --print-cache] [PYTHON]
#          PYTHON        the interpreter to build for and install into (default: python3)
#          --flavour     cpu (default): CPU variants + Vulkan; cuda: the same plus GGML_CUDA
#          --build-only  build and cache the wheel, install nothing; prints the cache folder
#          --print-cache print the cache folder of this flavour's wheel and stop (builds nothing)
#          --print-base  print where this flavour's wheel is compiled: bullseye-vN or host
# Env:   PACKER_WHEEL_FLAVOUR        same as --flavour
#        PACKER_BUILD_ROOT           1: compile in the build root (fail if it cannot be made),
#                                    0: on this machine; default: the root when running as root
#        PACKER_WHEEL_CACHE          cache folder (default ~/.cache/packer/wheels)
#        LLAMA_CPP_VERSION           llama-cpp-python version (default pinned below)
#        CMAKE_BUILD_PARALLEL_LEVEL  compile jobs (default 2); the compile runs under `nice`
#
# Build dependencies (Debian 12 package names; build/system-deps.sh installs most of them):
#   all flavours  build-essential cmake (>= 3.21)
#   Vulkan        glslc libvulkan-dev spirv-headers, and Vulkan headers new enough for ggml's
#                 Vulkan backend (VK_EXT_layer_settings, Vulkan >= 1.3.261). Debian 12's
#                 libvulkan-dev (1.3.239) is older: the script then fetches Debian 13's
#                 libvulkan-dev .deb with apt-get download (its own apt lists, installs nothing)
#                 and unpacks only its headers into ~/.cache/packer/vulkan-headers-VERSION.
#                 Or point PACKER_VULKAN_INCLUDE at an include folder that has them.
#   cuda          the CUDA toolkit (nvcc on PATH or in $CUDA_HOME/bin), e.g. nvidia-cuda-toolkit;
#                 without cuBLAS in it, PyPI's nvidia-cublas wheel is used and cached with ours.
#                 PACKER_CUDA_ARCHITECTURES (e.g. "75-virtual;86-real") narrows the GPU list.
# The script checks for them first and prints what to install.
# Time: the CPU variants (14 on x86-64) and the Vulkan shaders make this a long compile, over
# an hour on 2 busy cores. Nothing is needed at run time except, for Vulkan, the system's
# libvulkan.so.1 and a driver; model.run must NOT bundle libvulkan.so.1.
set -euo pipefail

FLAVOUR=${PACKER_WHEEL_FLAVOUR:-cpu}
BUILD_ONLY=0
PRINT_CACHE=0
PRINT_BASE=0
COMPILE_INTO= # internal: compile the wheel into this folder and stop (what runs in the root)
PY=python3
HERE=$(cd "$(dirname "$0")" && pwd)
while (($#)); do
    case $1 in
        --flavour) FLAVOUR=${2:?--flavour needs cpu or cuda}; shift 2 ;;
        --flavour=*) FLAVOUR=${1#*=}; shift ;;
        --build-only) BUILD_ONLY=1; shift ;;
        --print-cache) PRINT_CACHE=1; shift ;;
        --print-base) PRINT_BASE=1; shift ;;
        --compile-into) COMPILE_INTO=${2:?}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "llama-wheel.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
        *) PY=$1; shift ;;
    esac
done
VERSION=${LLAMA_CPP_VERSION:-0.3.36}

# Portable build: no -march=native; every CPU variant as its own dlopen()ed library; the
# backend libraries installed into llama_cpp/lib next to libllama.so (ggml's own install rule
# puts them in CMAKE_INSTALL_BINDIR, which would be site-packages/bin; llama-cpp-python's rules
# only know the single libggml-cpu). No curl, no llava/mtmd (we never load images).
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_VULKAN=ON"
CMAKE_FLAGS+=" -DCMAKE_INSTALL_BINDIR=llama_cpp/lib"
CMAKE_FLAGS+=" -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
case $FLAVOUR in
    cpu) ;;
    cuda)
        CMAKE_FLAGS+=" -DGGML_CUDA=ON"
        # GPU architectures (ggml's default list when unset: several, each one a long compile)
        [[ -n ${PACKER_CUDA_ARCHITECTURES:-} ]] &&
            CMAKE_FLAGS+=" -DCMAKE_CUDA_ARCHITECTURES=$PACKER_CUDA_ARCHITECTURES"
        # ggml links the driver (libcuda) for its virtual-memory pool, through the toolkit's link
        # stub; a toolkit without the stub (PyPI/minimal installs) gets ggml's plain pool instead
        if ! compgen -G "${CUDA_HOME:-/usr/local/cuda}/lib64/stubs/libcuda.so" >/dev/null &&
            ! compgen -G "${CUDA_HOME:-/usr/local/cuda}/targets/*/lib/stubs/libcuda.so" >/dev/null &&
            ! compgen -G "/usr/lib/*/libcuda.so" >/dev/null; then
            CMAKE_FLAGS+=" -DGGML_CUDA_NO_VMM=ON"
        fi
        ;;
    *) echo "llama-wheel.sh: unknown flavour '$FLAVOUR' (use cpu or cuda)" >&2; exit 2 ;;
esac
# The libraries the wheel must contain (llama_cpp/lib/), checked after the build.
EXPECTED=(libllama.so libggml.so libggml-base.so libggml-vulkan.so
    libggml-cpu-x64.so libggml-cpu-sse42.so libggml-cpu-sandybridge.so libggml-cpu-haswell.so
    libggml-cpu-skylakex.so libggml-cpu-icelake.so libggml-cpu-alderlake.so
    libggml-cpu-sapphirerapids.so)
[[ $FLAVOUR == cuda ]] && EXPECTED+=(libggml-cuda.so)

# Where the wheel is compiled: "bullseye-amd64-vN" (the build root), "host" (this machine), or
# "here" (--compile-into: already inside the root).
if [[ -n $COMPILE_INTO ]]; then
    BASE=here
elif [[ $FLAVOUR != cpu || ${PACKER_BUILD_ROOT:-} == 0 ]]; then
    BASE=host
elif [[ ${PACKER_BUILD_ROOT:-} == 1 ]] || bash "$HERE/build-root.sh" --ready ||
    { [[ $(id -u) == 0 ]] && command -v debootstrap >/dev/null; }; then
    BASE=$(bash "$HERE/build-root.sh" --path)
    BASE=${BASE##*/build-}
else
    BASE=host
fi
if ((PRINT_BASE)); then
    echo "$BASE"
    exit 0
fi

PYTAG=$("$PY" -c 'import sys,platform; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}")')
# Our fixes to the vendored llama.cpp (build/patches/VERSION/*.patch, applied in name order right
# after the sdist is unpacked): their text is part of the key, so a changed patch is a new wheel.
shopt -s nullglob
PATCHES=("$HERE/patches/$VERSION"/*.patch)
shopt -u nullglob
patches_digest() { # of the patches' text; "none" without patches
    ((${#PATCHES[@]})) || { echo none; return; }
    cat "${PATCHES[@]}" | sha256sum | cut -c1-64
}
KEY_PARTS=("$VERSION" "$CMAKE_FLAGS" "$PYTAG")
((${#PATCHES[@]})) && KEY_PARTS+=("$(patches_digest)")
[[ $BASE == host || $BASE == here ]] || KEY_PARTS+=("$BASE")
KEY=$(printf '%s\n' "${KEY_PARTS[@]}" | sha256sum | cut -c1-16)
CACHE=${PACKER_WHEEL_CACHE:-$HOME/.cache/packer/wheels}/llama-cpp-python-$VERSION-$FLAVOUR-$KEY
if ((PRINT_CACHE)); then # where this flavour's wheel is (or will be) cached; builds nothing
    echo "$CACHE"
    exit 0
fi

check_build_deps() {
    local missing=()
    command -v "${CC:-cc}" >/dev/null && command -v "${CXX:-c++}" >/dev/null || missing+=(build-essential)
    command -v cmake >/dev/null || missing+=(cmake)
    command -v glslc >/dev/null || missing+=(glslc)
    [[ -e /usr/include/vulkan/vulkan.h || -n ${VULKAN_SDK:-} ]] || missing+=(libvulkan-dev)
    [[ -e /usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake || -n ${VULKAN_SDK:-} ||
        -e /usr/local/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake ]] ||
        missing+=(spirv-headers)
    if ((${#missing[@]})); then
        echo "llama-wheel.sh: missing build tools; install them with:" >&2
        echo "    sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    if [[ $FLAVOUR == cuda ]]; then
        local nvcc
        nvcc=$(command -v nvcc || true)
        [[ -z $nvcc && -x ${CUDA_HOME:-/usr/local/cuda}/bin/nvcc ]] && nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
        if [[ -z $nvcc ]]; then
            echo "llama-wheel.sh: the cuda flavour needs the CUDA toolkit and nvcc was not found;" \
                "install it (Debian: apt-get install nvidia-cuda-toolkit, or NVIDIA's cuda-toolkit)" \
                "and put nvcc on PATH or set CUDA_HOME, or build --flavour cpu" >&2
            exit 1
        fi
        export CUDACXX=$nvcc
    fi
}

cublas_flags() { # CMake flags for cuBLAS when the toolkit lacks it: PyPI's nvidia-cublas wheel,
    # saved into folder $1 (it goes to the wheel cache and into the flavour's site with the wheel)
    local out=$1 toolkit major pkg unpacked inc lib
    toolkit=$(cd /tmp && "$CUDACXX" -dryrun -c /dev/null -x cu 2>&1 | sed -n 's/^#\$ TOP=//p' | sed -n 1p)
    [[ -n $toolkit ]] || toolkit=$(dirname "$(dirname "$(readlink -f "$CUDACXX")")")
    toolkit=$(readlink -f "$toolkit")
    if [[ -e $toolkit/include/cublas_v2.h || -e $toolkit/targets/x86_64-linux/include/cublas_v2.h ]]; then
        return 0
    fi
    major=$("$CUDACXX" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
    pkg="nvidia-cublas==$major.*"
    ((major < 13)) && pkg="nvidia-cublas-cu$major"
    echo "llama-wheel.sh: $toolkit has no cuBLAS: using PyPI's $pkg" >&2
    "$PY" -m pip download --quiet --no-deps "$pkg" -d "$out" >&2
    unpacked=$out.cublas
    rm -rf "$unpacked" && mkdir -p "$unpacked"
    "$PY" -m zipfile -e "$out"/nvidia_cublas*.whl "$unpacked"
    inc=$(dirname "$(find "$unpacked" -name cublas_v2.h | head -1)")
    lib=$(dirname "$(find "$unpacked" -name "libcublas.so.*" | head -1)")
    ln -sf "$(cd "$lib" && ls libcublas.so.* | head -1)" "$lib/libcublas.so"
    ln -sf "$(cd "$lib" && ls libcublasLt.so.* | head -1)" "$lib/libcublasLt.so"
    echo "-DCUDA_cublas_LIBRARY=$lib/libcublas.so -DCUDA_cublasLt_LIBRARY=$lib/libcublasLt.so" \
        "-DCMAKE_CUDA_FLAGS=-I$inc -DCMAKE_CXX_FLAGS=-I$inc"
}

vulkan_headers() { # prints an include folder with new enough Vulkan headers ('' = the system's)
    local have=/usr/include/vulkan/vulkan_core.h
    if [[ -n ${PACKER_VULKAN_INCLUDE:-} ]]; then have=$PACKER_VULKAN_INCLUDE/vulkan/vulkan_core.h; fi
    if grep -q VkLayerSettingsCreateInfoEXT "$have" 2>/dev/null; then
        echo "${PACKER_VULKAN_INCLUDE:-}"
        return
    fi
    local apt=/tmp/packer-apt-trixie dir deb
    dir=$(ls -d "$HOME"/.cache/packer/vulkan-headers-*/usr/include 2>/dev/null | tail -1)
    if [[ -z $dir ]]; then
        echo "llama-wheel.sh: $have predates VK_EXT_layer_settings; fetching Debian 13's Vulkan headers" >&2
        command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || {
            echo "llama-wheel.sh: no apt-get: set PACKER_VULKAN_INCLUDE to Vulkan-Headers >= 1.3.261 (include/)" >&2
            return 1
        }
        mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
        echo "deb http://deb.debian.org/debian trixie main" >"$apt/sources.list"
        local opts=(-q -o Dir::Etc::SourceList="$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
            -o Dir::State::Lists="$apt/lists" -o Dir::Cache="$apt/cache")
        apt-get "${opts[@]}" update >&2 && (cd "$apt" && apt-get "${opts[@]}" download libvulkan-dev >&2) || {
            echo "llama-wheel.sh: could not download libvulkan-dev from Debian 13; set PACKER_VULKAN_INCLUDE" >&2
            return 1
        }
        deb=$(ls "$apt"/libvulkan-dev_*.deb | tail -1)
        dir=$HOME/.cache/packer/vulkan-headers-$(basename "$deb" | cut -d_ -f2 | cut -d- -f1)
        dpkg-deb -x "$deb" "$dir"
        dir=$dir/usr/include
    fi
    echo "$dir"
}

check_wheel() { # the wheel must contain every backend library
    local listing missing=() lib
    listing=$("$PY" -c 'import sys,zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$1")
    for lib in "${EXPECTED[@]}"; do
        grep -qx "llama_cpp/lib/$lib" <<<"$listing" || missing+=("$lib")
    done
    if ((${#missing[@]})); then
        echo "llama-wheel.sh: the built wheel lacks llama_cpp/lib/{${missing[*]}}; not caching it" >&2
        return 1
    fi
}

compile_wheel() { # compile the wheel on this machine into folder $1 (resumable: fixed build dir)
    local out=$1 work=$1.build vk_include extra src start=$SECONDS
    check_build_deps
    # where the Vulkan headers come from does not change what the wheel runs on: not in the key
    vk_include=$(vulkan_headers)
    extra=${vk_include:+-DVulkan_INCLUDE_DIR=$vk_include}
    mkdir -p "$out"
    [[ $FLAVOUR == cuda ]] && extra+=" $(cublas_flags "$out")"
    echo "building llama-cpp-python $VERSION, flavour $FLAVOUR ($CMAKE_FLAGS); this takes long" >&2
    # The sdist is unpacked into, and compiled in, fixed folders next to the output: a retry
    # after a failure or an interruption continues where the compile stopped.
    src=$work/src/llama_cpp_python-$VERSION
    # (a source unpacked with other patches, or none, is unpacked again: its build too)
    if [[ ! -f $src/pyproject.toml || $(cat "$src/.packer-patches" 2>/dev/null) != "$(patches_digest)" ]]; then
        rm -rf "$work/src" "$work/cmake"
        mkdir -p "$work/src"
        "$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" \
            -d "$work/src" >&2
        tar -xzf "$work/src/llama_cpp_python-$VERSION.tar.gz" -C "$work/src"
        local patch_file
        for patch_file in "${PATCHES[@]}"; do
            echo "applying ${patch_file##*/}" >&2
            patch --quiet --forward -p1 -d "$src" <"$patch_file" >&2 || {
                echo "llama-wheel.sh: ${patch_file##*/} does not apply to llama-cpp-python $VERSION" >&2
                rm -rf "$work/src"
                exit 1
            }
        done
        patches_digest >"$src/.packer-patches"
    fi
    CMAKE_ARGS="$CMAKE_FLAGS $extra" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
        nice -n 10 "$PY" -m pip wheel --no-deps --no-cache-dir -v \
        --config-settings=build-dir="$work/cmake" "$src" -w "$out" >&2
    echo "compiled in $((SECONDS - start)) s" >&2
}

if [[ -n $COMPILE_INTO ]]; then # inside the build root (see compile_in_root)
    compile_wheel "$COMPILE_INTO"
    exit 0
fi

compile_in_root() { # compile the wheel inside the build root; the wheel ends up in folder $1
    local out=$1 vk_include stage
    ROOT_DIR=$(bash "$HERE/build-root.sh") # makes the root the first time (about 10 min)
    stage=$ROOT_DIR/work/llama-wheel
    rm -rf "$stage" && mkdir -p "$stage"
    cp "$HERE/llama-wheel.sh" "$stage/"
    [[ -d $HERE/patches ]] && cp -r "$HERE/patches" "$stage/"
    install -m 755 "$HERE/root-cc" "$ROOT_DIR/usr/local/bin/packer-cc"
    install -m 755 "$HERE/root-cc" "$ROOT_DIR/usr/local/bin/packer-c++"
    vk_include=$(vulkan_headers) # fetched here: the root's apt cannot read Debian 13's lists
    if [[ -n $vk_include ]]; then
        cp -a "$vk_include" "$stage/vulkan-include"
    else # this machine's headers are new enough
        mkdir -p "$stage/vulkan-include"
        cp -a /usr/include/vulkan /usr/include/vk_video "$stage/vulkan-include/" 2>/dev/null || true
    fi
    # Debian 11's spirv-headers has no CMake package: this machine's goes to the root's /usr/local
    [[ -e /usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake ]] || {
        echo "llama-wheel.sh: missing build tools; install them with:" >&2
        echo "    sudo apt-get install -y spirv-headers" >&2
        exit 1
    }
    mkdir -p "$ROOT_DIR/usr/local/share/cmake" "$ROOT_DIR/usr/local/include"
    rm -rf "$ROOT_DIR/usr/local/share/cmake/SPIRV-Headers" "$ROOT_DIR/usr/local/include/spirv"
    cp -a /usr/share/cmake/SPIRV-Headers "$ROOT_DIR/usr/local/share/cmake/"
    cp -a /usr/include/spirv "$ROOT_DIR/usr/local/include/"
    bash "$HERE/build-root.sh" --run env CC=packer-cc CXX=packer-c++ \
        PACKER_VULKAN_INCLUDE=/work/llama-wheel/vulkan-include \
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" LLAMA_CPP_VERSION="$VERSION" \
        bash /work/llama-wheel/llama-wheel.sh --flavour "$FLAVOUR" --compile-into /work/llama-out \
        /opt/python/bin/python3 >&2
    mv "$ROOT_DIR"/work/llama-out/llama_cpp_python-*.whl "$out/"
    rm -rf "$ROOT_DIR/work/llama-out" "$ROOT_DIR/work/llama-out.build" "$stage"
}

if ! ls "$CACHE"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    mkdir -p "${CACHE%/*}"
    tmp=$(mktemp -d "${CACHE%/*}/.build-XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    if [[ $BASE == host ]]; then
        compile_wheel "$CACHE.build/out"
        mv "$CACHE.build/out"/*.whl "$tmp/" # and PyPI's cuBLAS wheel when it was used
    else
        echo "compiling in the $BASE build root (model.run will need glibc 2.31, not this machine's)" >&2
        compile_in_root "$tmp"
    fi
    check_wheel "$tmp"/llama_cpp_python-*.whl
    rm -rf "$CACHE.build"
    printf '%s\n%s\n' "$CMAKE_FLAGS" "compiled in: $BASE" >"$tmp/CMAKE_ARGS"
    rm -rf "$CACHE" && mv "$tmp" "$CACHE"
    trap - EXIT
else
    echo "using cached llama-cpp-python wheel: $CACHE" >&2
fi
if ((!BUILD_ONLY)); then
    # its pure-Python dependencies, then the wheel, into PYTHON and, when it was compiled there,
    # into the build root's Python (packer/stub.py freezes the runtime with that one)
    deps=("typing-extensions>=4.5" "numpy>=1.20" "diskcache>=5.6.1" "jinja2>=2.11.3")
    "$PY" -m pip install --no-deps --force-reinstall --quiet "$CACHE"/llama_cpp_python-*.whl
    "$PY" -m pip install --quiet "${deps[@]}"
    if [[ $BASE != host ]]; then
        ROOT_DIR=$(bash "$HERE/build-root.sh")
        mkdir -p "$ROOT_DIR/work/wheel"
        cp "$CACHE"/llama_cpp_python-*.whl "$ROOT_DIR/work/wheel/"
        bash "$HERE/build-root.sh" --run bash -c 'python3 -m pip install --no-deps --force-reinstall \
            --quiet /work/wheel/*.whl && python3 -m pip install --quiet "$@"' - "${deps[@]}" >&2
        rm -rf "$ROOT_DIR/work/wheel"
    fi
fi
echo "$CACHE"
