#!/usr/bin/env bash
# qemu-arm/boot.sh BOARD [--storage FILE] [--append WORDS] [--no-data] [--memory MIB]
# Boots a built board (build.sh) under QEMU (TCG) on the serial console, which is this
# terminal (Ctrl-A X quits). The flash or disk is FILE (default: the board's working copy in
# $CACHE/run/BOARD, made from the pristine image on first use), so what the guest writes stays
# for the next boot.
#   --append WORDS  more kernel command line (ovl.failsafe, ovl.volatile, ...)
#   --no-data       the board without its writable partition (JFFS2 NOR boards only: mtdparts
#                   without it; the others refuse it)
#   --initrd FILE   another initramfs (the benchmark's busybox baseline)
#   --disk FILE     a second, read-only disk (virtio-blk): /dev/vdb on x86, /dev/vda on NOR
#                   boards once the ROM's virtio modules are loaded (an upgrade stick)
set -euo pipefail
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/.." && pwd)
CACHE=${OVL_CACHE:-$REPO/.cache}
OVL_STEP=boot
. "$REPO/scripts/lib.sh"
. "$HERE/boards.sh"

board_vars "${1:-$DEFAULT_BOARD}" || exit 2
[ $# -gt 0 ] && shift
storage="" extra="" no_data=0 mem=256 initrd="" disk=""
while [ $# -gt 0 ]; do
    case $1 in
    --storage) storage=$2; shift 2 ;;
    --append) extra="$extra $2"; shift 2 ;;
    --no-data) no_data=1; shift ;;
    --memory) mem=$2; shift 2 ;;
    --initrd) initrd=$2; shift 2 ;;
    --disk) disk=$2; shift 2 ;;
    *) die "unknown option $1" ;;
    esac
done
# Only the JFFS2 NOR boards can hide their writable partition (leave it out of mtdparts); on
# the others it is a UBI volume or a partition of the disk, so say so rather than boot with it.
[ $no_data = 0 ] || [ "$STORAGE" = nor ] ||
    die "--no-data: board $BOARD keeps its writable partition in ${STORAGE/nor-/} storage; only the JFFS2 NOR boards (qemu-aarch64-nor, qemu-armv7-nor) can boot without it"
img=$CACHE/images/$BOARD
[ -f "$img/initramfs.img" ] || die "board $BOARD is not built: run qemu-arm/build.sh $BOARD"
[ -n "$initrd" ] || initrd=$img/initramfs.img
if [ -z "$storage" ]; then
    storage=$CACHE/run/$BOARD/storage.img
    if [ ! -f "$storage" ]; then
        mkdir -p "$(dirname "$storage")"
        cp "$img/storage.img" "$storage"
    fi
fi

append="console=$CONSOLE panic=-1 $APPEND"
drive=()
case $STORAGE in
nor*)
    [ $no_data = 1 ] && [ "$STORAGE" = nor ] && append="console=$CONSOLE panic=-1 cmdlinepart.mtdparts=$NOR_MTDPARTS_NO_DATA"
    drive=(-drive "if=pflash,unit=1,format=raw,file=$storage")
    ;;
gpt | combined)
    drive=(-drive "if=none,id=disk0,format=raw,cache=writeback,file=$storage"
        -device "virtio-blk-pci,drive=disk0,serial=ovl-disk")
    ;;
esac
if [ -n "$disk" ]; then
    dev=virtio-blk-pci
    case $STORAGE in nor*) dev=virtio-blk-device ;; esac
    drive+=(-drive "if=none,id=disk1,format=raw,readonly=on,file=$disk" -device "$dev,drive=disk1")
fi
# shellcheck disable=SC2086
exec $QEMU $QEMU_MACHINE -m "$mem" -nographic -no-reboot \
    -kernel "$img/kernel" -initrd "$initrd" \
    -append "$append $extra" "${drive[@]}"
