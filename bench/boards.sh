#!/usr/bin/env bash
# Board benchmark: builds the boards if needed, then boots each several times with ovl and
# with the busybox-shell baseline and prints medians and the ovl/baseline ratio.
# Usage: bench/boards.sh [--boots N] [BOARD...]
set -euo pipefail
cd "$(dirname "$0")/.."
OVL_STEP=bench
. scripts/lib.sh
need_root
boards=()
for a in "$@"; do case $a in qemu-*) boards+=("$a") ;; esac; done
[ ${#boards[@]} -gt 0 ] || boards=(qemu-aarch64-nor qemu-aarch64-nor-ubi qemu-x86_64-disk)
qemu-arm/build.sh "${boards[@]}"
exec python3 bench/boards.py "$@"
