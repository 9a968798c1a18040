# The emulated boards: what each one needs to build and boot. Sourced by build.sh, boot.sh
# and run. A board's name is its board file's name (board/NAME.json).

BOARDS="qemu-aarch64-nor qemu-x86_64-disk qemu-x86_64-combined qemu-armv7-nor qemu-aarch64-nor-ubi qemu-armv7-nand"
DEFAULT_BOARD=qemu-aarch64-nor

# NOR layout on the virt board, aarch64 and armv7 alike: two 64 MiB CFI banks that physmap
# shows as one MTD "0.flash"; we only give bank 1 (bank 0 with -kernel is taken as firmware and
# hangs the guest).
# Its first 16 MiB are the ROM, the other 48 MiB rootfs_data, as /proc/mtd shows on a router.
# rootfs is writable, as on a router: sysupgrade writes the new ROM there.
NOR_MTDPARTS="0.flash:64m(bank0)ro,16m(rootfs),-(rootfs_data)"
NOR_MTDPARTS_NO_DATA="0.flash:64m(bank0)ro,16m(rootfs)"
# The NOR board with UBI: all of bank 1 one MTD partition `ubi`, holding the volumes rootfs
# (the squashfs, read through ubiblock) and rootfs_data (UBIFS).
NOR_UBI_MTDPARTS="0.flash:64m(bank0)ro,-(ubi)"
NOR_UBI_PEB_KIB=256
NOR_UBI_ROM_MIB=16
NOR_ROM_MIB=16
NOR_BANK_MIB=64
# GPT disk: 1 MiB of table, the ROM partition, the data partition, room for the backup table.
DISK_ROM_MIB=32
DISK_DATA_MIB=64
COMBINED_PART_MIB=96

# The initramfs compressions the boards' Debian kernels unpack (CONFIG_RD_*; "none" is a
# plain cpio), each as the kernel wants it: lz4 in its legacy frame, xz with CRC32 checks and
# a 1 MiB dictionary (as the kernel's own build makes it), lzma with the same dictionary (its
# unpacker allocates the whole dictionary). bench/initramfs.sh measures them per board.
INITRAMFS_COMPS="gzip none bzip2 lzma xz lzo lz4 zstd"

# initramfs_compress COMP: the cpio on stdin, compressed with COMP, on stdout.
initramfs_compress() {
    case $1 in
    none) cat ;;
    gzip) gzip -6 -n ;;
    bzip2) bzip2 -9 ;;
    lzma) xz --format=lzma --lzma1=preset=6,dict=1MiB ;;
    xz) xz --check=crc32 --lzma2=preset=6,dict=1MiB ;;
    lzo) lzop -9 ;;
    lz4) lz4 -l -9 -q ;;
    zstd) zstd -19 -q ;;
    *) echo "unknown initramfs compression '$1' (known: $INITRAMFS_COMPS)" >&2; return 1 ;;
    esac
}

# initramfs_tool COMP: the Debian package and command that compress with COMP (ensure_packages).
initramfs_tool() {
    case $1 in
    none | gzip) echo gzip:gzip ;;
    bzip2) echo bzip2:bzip2 ;;
    lzma | xz) echo xz-utils:xz ;;
    lzo) echo lzop:lzop ;;
    lz4) echo lz4:lz4 ;;
    zstd) echo zstd:zstd ;;
    *) echo "unknown initramfs compression '$1' (known: $INITRAMFS_COMPS)" >&2; return 1 ;;
    esac
}

board_vars() {
    BOARD=$1
    case $BOARD in
    qemu-aarch64-nor | qemu-armv7-nor)
        CONSOLE=ttyAMA0
        STORAGE=nor
        # cmdlinepart is a module: preinit passes it this (the kernel would not).
        APPEND="cmdlinepart.mtdparts=$NOR_MTDPARTS"
        ;;
    qemu-aarch64-nor-ubi)
        CONSOLE=ttyAMA0
        STORAGE=nor-ubi
        APPEND="cmdlinepart.mtdparts=$NOR_UBI_MTDPARTS"
        ;;
    qemu-armv7-nand)
        # The ROM on NOR; the writable UBI on a NAND chip that nandsim keeps in RAM (so it is
        # empty, bad blocks and all, at every boot: for NAND behaviour within one boot).
        CONSOLE=ttyAMA0
        STORAGE=nor-nand
        APPEND="cmdlinepart.mtdparts=$NOR_MTDPARTS_NO_DATA"
        ;;
    qemu-x86_64-disk | qemu-x86_64-combined)
        ARCH=amd64
        RUST_TARGET=x86_64-unknown-linux-musl
        QEMU=qemu-system-x86_64
        QEMU_MACHINE="-M pc"
        CONSOLE=ttyS0
        APPEND=""
        ;;
    *)
        echo "unknown board '$BOARD' (boards: $BOARDS)" >&2
        return 1
        ;;
    esac
    case $BOARD in
    qemu-aarch64-nor | qemu-aarch64-nor-ubi)
        ARCH=arm64
        RUST_TARGET=aarch64-unknown-linux-musl
        QEMU=qemu-system-aarch64
        QEMU_MACHINE="-M virt -cpu cortex-a53"
        ;;
    qemu-armv7-nor | qemu-armv7-nand)
        # The same NOR router on 32-bit ARM: Debian's armmp kernel, where mtd and chipreg are
        # built in. ovl is static musl, its std built by nightly (scripts/device.sh).
        ARCH=armhf
        RUST_TARGET=armv7-unknown-linux-musleabihf
        QEMU=qemu-system-arm
        QEMU_MACHINE="-M virt -cpu cortex-a15"
        ;;
    qemu-x86_64-disk) STORAGE=gpt ;;
    qemu-x86_64-combined) STORAGE=combined ;;
    esac
    # The initramfs's compression (the baseline's too), the fastest from kernel start to
    # preinit in bench/initramfs.sh (medians, README "Benchmarks"); OVL_INITRAMFS_COMP
    # overrides it for a build. Where lzo comes within noise, none is kept: the kernel's
    # unpacking of it is the shortest on every board (35-50 ms; lzo 55-75, gzip 75-125).
    # "none" costs 2-3.4x gzip's size, which QEMU loads before the kernel starts, for free.
    case $BOARD in
    qemu-aarch64-nor) INITRAMFS_COMP=none ;; # 1138 ms, gzip 1199, lzo 1168 (9 boots)
    qemu-aarch64-nor-ubi) INITRAMFS_COMP=none ;; # 1192 ms, gzip 1276, lzo 1234 (7 boots)
    qemu-x86_64-disk) INITRAMFS_COMP=none ;; # 2157 ms, gzip 2178, lzo 2161 (9 boots)
    qemu-x86_64-combined) INITRAMFS_COMP=none ;; # 2056 ms, gzip 2122, lzo 2050 (9 boots)
    qemu-armv7-nor) INITRAMFS_COMP=none ;; # 2083 ms, gzip 2178, lzo 2126 (9 boots)
    qemu-armv7-nand) INITRAMFS_COMP=none ;; # 2165 ms, gzip 2185, lzo 2166 (7 boots)
    esac
    INITRAMFS_COMP=${OVL_INITRAMFS_COMP:-$INITRAMFS_COMP}
}
