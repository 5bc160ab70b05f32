#!/usr/bin/env bash
# The Debian packages the build and the tests need; `make install-test` runs this.
#
# Idempotent: asks dpkg what is installed and runs apt-get (update, then install) only when
# something is missing. Without root or apt-get it prints what to install and exits 0: the
# tests that need a missing package skip and say which. PACKER_SKIP_SYSTEM_DEPS=1 skips it.
# Usage: build/system-deps.sh [--list]   (--list: print the package names and exit)
set -euo pipefail

# The one list: package, then who needs it.
PACKAGES=(
    build-essential     # build/llama-wheel.sh (llama-cpp-python compile), build/launcher.sh
    cmake               # build/llama-wheel.sh: llama.cpp's build
    libzstd-dev         # build/launcher.sh: the static launcher links libzstd.a
    glslc               # build/llama-wheel.sh: compiles ggml's Vulkan shaders (#5 GPU)
    libvulkan-dev       # build/llama-wheel.sh: Vulkan headers to build ggml's Vulkan backend
    spirv-headers       # build/llama-wheel.sh: SPIR-V headers for ggml's Vulkan backend
    libvulkan1          # tests: the Vulkan loader that model.run opens at run time
    mesa-vulkan-drivers # tests: lavapipe, Vulkan on the CPU (#5 item 3d)
    qemu-user           # tests: the engine under qemu-x86_64 -cpu MODEL (#5 item 3c)
    debootstrap         # build/build-root.sh (the Debian 11 build root, #5 item 4) and
                        # build/debian-root.sh -> tests/test_noinstall.py (#5 item 3b)
    curl                # build/build-root.sh: fetches CPython's source tarball from Debian
    chromium            # tests/test_webpage.py: the web chat page in headless Chromium
    dosfstools          # tests/test_usb_slow.py: mkfs.vfat for `packer usb` onto a FAT32 image
)

if [[ ${1:-} == --list ]]; then
    printf '%s\n' "${PACKAGES[@]}"
    exit 0
fi
if [[ ${PACKER_SKIP_SYSTEM_DEPS:-} == 1 ]]; then
    exit 0
fi
if ! command -v dpkg-query >/dev/null; then
    echo "system-deps.sh: not a Debian-like system; install the equivalents of: ${PACKAGES[*]}" >&2
    exit 0
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
    exit 0
fi

if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "system-deps.sh: missing Debian packages (the tests that need them will skip):" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    exit 0
fi

echo "system-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt=(apt-get -q -o DPkg::Lock::Timeout=600)
if ! { "${apt[@]}" update >/dev/null &&
    "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null; }; then
    echo "system-deps.sh: apt-get could not install ${missing[*]}:" \
        "the tests that need them will skip" >&2
fi
exit 0
