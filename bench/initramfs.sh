#!/usr/bin/env bash
# Initramfs compression benchmark: builds the boards if needed, compresses each board's
# initramfs (the cpio build.sh keeps) with every compression its kernel unpacks, boots each
# variant N times in interleaved rounds and prints per board and compression the size, the
# median kernel start -> preinit start and the ratio to gzip. Figures only.
# Usage: bench/initramfs.sh [--boots N] [--comps "gzip lz4 ..."] [--no-build] [BOARD...]
#   (default: 5 boots, every compression in INITRAMFS_COMPS, every board in BOARDS;
#   --no-build boots the images as they were last built)
set -euo pipefail
cd "$(dirname "$0")/.."
OVL_STEP=bench
. scripts/lib.sh
. qemu-arm/boards.sh
need_root
boots=5 comps=$INITRAMFS_COMPS build=1 boards=()
while [ $# -gt 0 ]; do
    case $1 in
    --boots) boots=$2; shift 2 ;;
    --comps) comps=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    qemu-*) boards+=("$1"); shift ;;
    *) die "unknown argument $1 (usage: bench/initramfs.sh [--boots N] [--comps LIST] [--no-build] [BOARD...])" ;;
    esac
done
# shellcheck disable=SC2206 # a word list
[ ${#boards[@]} -gt 0 ] || boards=($BOARDS)
tools=()
for c in $comps; do tools+=("$(initramfs_tool "$c")") || die "unknown compression $c"; done
ensure_packages "${tools[@]}"
[ $build = 0 ] || qemu-arm/build.sh "${boards[@]}"

cache=${OVL_CACHE:-$PWD/.cache}
for b in "${boards[@]}"; do
    [ -f "$cache/images/$b/initramfs.cpio" ] || die "board $b is not built: run qemu-arm/build.sh $b"
done
dir=$(mktemp -d "${TMPDIR:-/tmp}/ovl-initramfs.XXXXXX")
trap 'rm -rf "$dir"' EXIT
for b in "${boards[@]}"; do
    mkdir -p "$dir/$b"
    cp "$cache/images/$b/initramfs.cpio" "$dir/$b/initramfs.cpio"
    for c in $comps; do
        initramfs_compress "$c" < "$dir/$b/initramfs.cpio" > "$dir/$b/initramfs.$c"
    done
done
python3 bench/initramfs.py --dir "$dir" --boots "$boots" --comps "$comps" "${boards[@]}"
