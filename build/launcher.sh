#!/usr/bin/env bash
# Build the native launcher of model.run (build/launcher/*.c): static, stripped, x86-64.
# Usage: build/launcher.sh OUT   (packer/stub.py calls this; needs gcc and libzstd-dev's libzstd.a)
set -euo pipefail
out=${1:?usage: build/launcher.sh OUT}
dir="$(cd "$(dirname "$0")" && pwd)/launcher"
CC=${CC:-gcc}
zstd_a=$("$CC" -print-file-name=libzstd.a)
if [[ "$zstd_a" != /* || ! -f "$zstd_a" ]]; then
    echo "launcher.sh: libzstd.a not found: install libzstd-dev (apt-get install libzstd-dev)" >&2
    exit 1
fi
"$CC" -std=c11 -O2 -Wall -Wextra -Werror -static -s \
    -ffunction-sections -fdata-sections -Wl,--gc-sections \
    -o "$out" "$dir/launcher.c" "$dir/sha256.c" "$zstd_a"
