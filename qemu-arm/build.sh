#!/usr/bin/env bash
# qemu-arm/build.sh BOARD... — builds what an emulated board boots, from nothing, with cache:
#   the kernel and modules (kernel.sh), ovl for the board's target, a static busybox for its
#   architecture, the ROM (squashfs: busybox, ovl, the firstboot scripts, ovl's man pages and
#   shell completions, mkfs.ext4 where the board formats ext4, an init that gives a shell), the
#   initramfs (ovl as /init, the board file, the modules) and the pristine flash or disk image.
# Output: $CACHE/images/BOARD/{initramfs.img, rom.sqfs, sysupgrade.img, storage.img,
# kernel, env}; initramfs.img is initramfs.cpio (kept for bench/initramfs.sh) compressed with
# the board's INITRAMFS_COMP (boards.sh; $OVL_INITRAMFS_COMP overrides it), and so is the
# benchmark's initramfs-baseline.img. The ROM's version is $OVL_IMAGE_VERSION (default: git
# describe), its compat version $OVL_IMAGE_COMPAT (default 1.0).
# Prints a line per step. Needs root (apt-get, mknod for /dev/console).
set -Eeuo pipefail
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$HERE/.." && pwd)
CACHE=${OVL_CACHE:-$REPO/.cache}
OVL_STEP=build
. "$REPO/scripts/lib.sh"
. "$REPO/scripts/device.sh"
. "$HERE/boards.sh"
trap 'say "failed at line $LINENO: $BASH_COMMAND"' ERR

IMAGE_VERSION=${OVL_IMAGE_VERSION:-$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo dev)}
IMAGE_COMPAT=${OVL_IMAGE_COMPAT:-1.0}

need_root
[ $# -gt 0 ] || set -- "$DEFAULT_BOARD"
for b in "$@"; do board_vars "$b" >/dev/null || die "unknown board '$b' (boards: $BOARDS)"; done

ensure_host_tools
ensure_packages qemu-system-arm:qemu-system-aarch64 qemu-system-arm:qemu-system-arm \
    qemu-system-x86:qemu-system-x86_64 file:file mtd-utils:ubinize

# busybox_for ARCH: a static busybox from Debian's busybox-static for ARCH, cached. armhf comes
# through the private APT configuration kernel.sh keeps for it: adding armhf to dpkg's
# architectures breaks apt-get update on these hosts. Other foreign ones are added to dpkg.
busybox_for() {
    local arch=$1 dir=$CACHE/busybox/$1 conf=""
    if [ ! -x "$dir/busybox" ]; then
        if [ "$arch" = armhf ]; then
            conf=$CACHE/kernels/apt-$arch/apt.conf
            [ -f "$conf" ] || die "no private APT configuration for $arch ($conf): run qemu-arm/kernel.sh $arch"
        elif [ "$arch" != "$(dpkg --print-architecture)" ] &&
            ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
            dpkg --add-architecture "$arch"
            apt-get update -qq >/dev/null || die "apt-get update failed after adding $arch"
        fi
        say "downloading busybox-static:$arch"
        local apt=(env ${conf:+APT_CONFIG=$conf} apt-get)
        rm -rf "$dir.dl" && mkdir -p "$dir.dl"
        (cd "$dir.dl" && "${apt[@]}" download -qq "busybox-static:$arch" >/dev/null 2>&1) || {
            # Stale lists: refresh once (some private indexes may fail; kernel.sh says which).
            "${apt[@]}" update -qq >/dev/null 2>&1 || true
            (cd "$dir.dl" && "${apt[@]}" download -qq "busybox-static:$arch" >/dev/null)
        } || die "apt-get download busybox-static:$arch failed${conf:+ (APT_CONFIG=$conf)}"
        dpkg-deb -x "$dir.dl"/busybox-static_*.deb "$dir.dl/x"
        mkdir -p "$dir"
        cp "$dir.dl/x/bin/busybox" "$dir/busybox"
        rm -rf "$dir.dl"
    fi
    printf '%s\n' "$dir/busybox"
}

# copy_with_libs PROG ROOT: a dynamic host program and the libraries ldd names, at their paths.
copy_with_libs() {
    local prog=$1 root=$2 f
    for f in "$prog" $(ldd "$prog" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$f")"
        cp -L "$f" "$root$f"
    done
}

# check_module_order KDIR MODULE...: every module present, each one's dependencies earlier.
check_module_order() {
    local kdir=$1 m dep seen=" "
    shift
    for m in "$@"; do
        [ -f "$kdir/modules/$m.ko" ] || die "board module $m: no $m.ko in $kdir/modules"
        for dep in $(modinfo -F depends "$kdir/modules/$m.ko" | tr ',' ' '); do
            case $seen in *" $dep "*) ;; *) die "board module $m needs $dep, which the board does not load before it" ;; esac
        done
        seen="$seen$m "
    done
}

# check_gpt IMAGE NAME...: the image's GPT names these partitions, in this order.
check_gpt() {
    local img=$1 got
    shift
    got=$(sgdisk -p "$img" | awk '/^ +[0-9]+ /{print $NF}' | tr '\n' ' ')
    [ "$got" = "$* " ] || die "$img: GPT has partitions '$got', wanted '$*'"
}

build_board() {
    board_vars "$1"
    local out=$CACHE/images/$BOARD work
    work=$(mktemp -d "$CACHE/tmp.build.XXXXXX")
    # shellcheck disable=SC2064 # the directory is fixed now
    trap "rm -rf '$work'" EXIT
    mkdir -p "$out"

    say "[$BOARD] kernel and modules ($ARCH)"
    "$HERE/kernel.sh" "$ARCH" >&2
    local kdir=$CACHE/kernels/$ARCH release
    release=$(cat "$kdir/release")

    # preinit falls back to tmpfs on a board file it cannot read, but without the board's
    # modules a router finds no flash at all: refuse to build an image with such a file.
    say "[$BOARD] checking board/$BOARD.json"
    (cd "$REPO" && cargo run --quiet --bin ovl -- check-board "board/$BOARD.json" >/dev/null) ||
        die "board/$BOARD.json is not a valid board file (see the error above)"

    say "[$BOARD] ovl for $RUST_TARGET (device build: scripts/device.sh)"
    device_build "$REPO" "$RUST_TARGET"
    local ovl=$DEVICE_BIN
    if [ "$RUST_TARGET" = "$(uname -m)-unknown-linux-musl" ]; then
        say "[$BOARD] the device build's help, beside the host's (it runs here)"
        device_check_help "$REPO" "$ovl"
    fi
    # It runs as /init before anything else is there: it must not need a dynamic loader.
    file -b "$ovl" | grep -Eq 'statically linked|static-pie linked' ||
        die "$ovl is not a static binary: $(file -b "$ovl")"

    local bb
    bb=$(busybox_for "$ARCH")

    say "[$BOARD] ROM (squashfs)"
    local rom=$work/rom
    mkdir -p "$rom"/{bin,sbin,usr/bin,usr/sbin,etc/ovl,proc,sys,dev,run,tmp,rom,overlay,mnt,root,lib}
    cp "$bb" "$rom/bin/busybox"
    # The applet list comes from the host's busybox-static of the same Debian release.
    local link
    for link in $(busybox --list-full); do
        [ -e "$rom/$link" ] || ln -s /bin/busybox "$rom/$link"
    done
    cp "$ovl" "$rom/sbin/ovlctl"
    ln -sf ovlctl "$rom/sbin/preinit"
    rm -f "$rom/sbin/init"
    install -m 755 "$HERE/rom/init" "$rom/sbin/init"
    install -m 644 "$HERE/rom/profile" "$rom/etc/profile"
    install -m 755 "$HERE/rom/writer" "$rom/sbin/ovl-writer"
    install -m 644 "$REPO/board/$BOARD.json" "$rom/etc/ovl/board.json"
    mkdir -p "$rom/etc/firstboot.d"
    find "$REPO/firstboot" -maxdepth 1 -type f ! -name '*.md' -exec cp {} "$rom/etc/firstboot.d/" \;
    # ovl's man pages, gzip'd as distributions ship them, and its shell completions, where man
    # and the shells look (made once for all boards, below).
    local page
    mkdir -p "$rom/usr/share/man/man8"
    for page in "$DOCS"/man/man8/*.8; do
        gzip -9n < "$page" > "$rom/usr/share/man/man8/${page##*/}.gz"
    done
    cp -R "$DOCS/bash-completion" "$DOCS/zsh" "$DOCS/fish" "$rom/usr/share/"
    echo "ovl $BOARD" > "$rom/etc/banner"
    # What sysupgrade compares a new image with (see README, "Upgrade").
    printf 'version %s\ncompat %s\n' "$IMAGE_VERSION" "$IMAGE_COMPAT" > "$rom/etc/ovl/release"
    if [ "${STORAGE#nor}" != "$STORAGE" ]; then
        # Not needed to boot: they let the board read an upgrade image from a second disk.
        mkdir -p "$rom/lib/modules/$release"
        for m in virtio_mmio virtio_blk; do
            [ -f "$kdir/modules/$m.ko" ] && cp "$kdir/modules/$m.ko" "$rom/lib/modules/$release/"
        done
    fi
    printf 'root:x:0:0:root:/root:/bin/sh\n' > "$rom/etc/passwd"
    printf 'root:x:0:\n' > "$rom/etc/group"
    if [ "${STORAGE#nor}" = "$STORAGE" ]; then
        # ext4 boards format their data partition on first boot: ship mkfs.ext4 in the ROM.
        [ "$ARCH" = "$(dpkg --print-architecture)" ] || die "mkfs.ext4 for $ARCH is not packaged here"
        copy_with_libs /usr/sbin/mkfs.ext4 "$rom"
        ln -sf /usr/sbin/mkfs.ext4 "$rom/sbin/mkfs.ext4"
        cp /etc/mke2fs.conf "$rom/etc/"
    fi
    mksquashfs "$rom" "$out/rom.sqfs" -noappend -quiet -all-root -comp xz -b 256K >/dev/null
    say "[$BOARD] sysupgrade image (version $IMAGE_VERSION, compat $IMAGE_COMPAT)"
    (cd "$REPO" && cargo run --quiet --bin ovl -- mkimage -b "$BOARD" --release "$IMAGE_VERSION" \
        --compat "$IMAGE_COMPAT" "$out/rom.sqfs" "$out/sysupgrade.img")

    say "[$BOARD] initramfs (ovl as /init, board file, modules; $INITRAMFS_COMP)"
    local ird=$work/initramfs mods tool
    tool=$(initramfs_tool "$INITRAMFS_COMP") || die "board $BOARD: no initramfs compression '$INITRAMFS_COMP'"
    ensure_packages "$tool"
    mkdir -p "$ird"/{dev,proc,sys,run,etc/ovl,"lib/modules/$release"}
    cp "$ovl" "$ird/init"
    install -m 644 "$REPO/board/$BOARD.json" "$ird/etc/ovl/board.json"
    mknod -m 600 "$ird/dev/console" c 5 1
    mods=$(python3 -c 'import json,sys; print(" ".join(m["name"] for m in json.load(open(sys.argv[1])).get("modules", [])))' "$REPO/board/$BOARD.json")
    # shellcheck disable=SC2086
    check_module_order "$kdir" $mods
    for m in $mods; do cp "$kdir/modules/$m.ko" "$ird/lib/modules/$release/"; done
    (cd "$ird" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > "$out/initramfs.cpio")
    initramfs_compress "$INITRAMFS_COMP" < "$out/initramfs.cpio" > "$out/initramfs.img"
    rm -f "$out/initramfs.cpio.gz" "$out/initramfs-baseline.cpio.gz"

    # The baseline's shell preinit knows MTD and GPT names, not UBI volumes.
    if [ "$STORAGE" != combined ] && [ "$STORAGE" != nor-ubi ] && [ "$STORAGE" != nor-nand ]; then
        say "[$BOARD] baseline initramfs (busybox shell preinit, for the benchmark)"
        local bld=$work/baseline
        mkdir -p "$bld"/{bin,dev,etc,lib/modules}
        cp "$bb" "$bld/bin/busybox"
        install -m 755 "$HERE/baseline/init" "$bld/init"
        mknod -m 600 "$bld/dev/console" c 5 1
        for m in $mods; do cp "$kdir/modules/$m.ko" "$bld/lib/modules/"; done
        python3 - "$REPO/board/$BOARD.json" > "$bld/etc/baseline.conf" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))
print(f'MODULES="{" ".join(m["name"] for m in b.get("modules", []))}"')
print(f'ROM="{b["rom"]}"\nDATA="{b["data"]}"\nFSTYPE="{b["fstype"]}"')
print(f'MKFS="{b.get("mkfs", "/usr/sbin/mkfs.ext4")}"')
PY
        (cd "$bld" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
            initramfs_compress "$INITRAMFS_COMP" > "$out/initramfs-baseline.img"
    fi

    say "[$BOARD] pristine $STORAGE image"
    # Built beside and renamed at the end, so a failed build never leaves half an image.
    local img=$out/storage.img.new rom_bytes
    rm -f "$img"
    rom_bytes=$(stat -c %s "$out/rom.sqfs")
    case $STORAGE in
    nor | nor-nand)
        [ "$rom_bytes" -le $((NOR_ROM_MIB << 20)) ] || die "ROM is $rom_bytes bytes, more than the ${NOR_ROM_MIB} MiB partition"
        # Flash is erased to 0xFF; the ROM goes at the start of bank 1.
        head -c $((NOR_BANK_MIB << 20)) /dev/zero | tr '\0' '\377' > "$img"
        dd if="$out/rom.sqfs" of="$img" conv=notrunc status=none
        ;;
    nor-ubi)
        [ "$rom_bytes" -le $((NOR_UBI_ROM_MIB << 20)) ] || die "ROM is $rom_bytes bytes, more than the ${NOR_UBI_ROM_MIB} MiB volume"
        # One UBI image for the whole bank: rootfs holds the squashfs; rootfs_data is made
        # small and grows to the rest of the device at the first attach (autoresize).
        cat > "$work/ubinize.ini" <<INI
[rootfs]
mode=ubi
image=$out/rom.sqfs
vol_id=0
vol_type=dynamic
vol_name=rootfs
vol_size=${NOR_UBI_ROM_MIB}MiB

[rootfs_data]
mode=ubi
vol_id=1
vol_type=dynamic
vol_name=rootfs_data
vol_size=1MiB
vol_flags=autoresize
INI
        ubinize -o "$work/ubi.img" -p "${NOR_UBI_PEB_KIB}KiB" -m 1 "$work/ubinize.ini" >/dev/null
        head -c $((NOR_BANK_MIB << 20)) /dev/zero | tr '\0' '\377' > "$img"
        dd if="$work/ubi.img" of="$img" conv=notrunc status=none
        ;;
    gpt)
        [ "$rom_bytes" -le $((DISK_ROM_MIB << 20)) ] || die "ROM is larger than its ${DISK_ROM_MIB} MiB partition"
        truncate -s $(((DISK_ROM_MIB + DISK_DATA_MIB + 2) << 20)) "$img"
        # sgdisk has no -q: given one it writes nothing and still exits 0, hence check_gpt.
        sgdisk -n "1:2048:+${DISK_ROM_MIB}M" -c 1:rootfs -n "2:0:+${DISK_DATA_MIB}M" -c 2:rootfs_data "$img" >/dev/null
        check_gpt "$img" rootfs rootfs_data
        dd if="$out/rom.sqfs" of="$img" bs=1M seek=1 conv=notrunc status=none
        # A new data partition is erased (0xFF): ovl formats that kind of blank on first boot.
        head -c $((DISK_DATA_MIB << 20)) /dev/zero | tr '\0' '\377' |
            dd of="$img" bs=1M seek=$((1 + DISK_ROM_MIB)) conv=notrunc status=none
        ;;
    combined)
        truncate -s $(((COMBINED_PART_MIB + 2) << 20)) "$img"
        sgdisk -n "1:2048:+${COMBINED_PART_MIB}M" -c 1:rootfs "$img" >/dev/null
        check_gpt "$img" rootfs
        head -c $((COMBINED_PART_MIB << 20)) /dev/zero | tr '\0' '\377' |
            dd of="$img" bs=1M seek=1 conv=notrunc status=none
        dd if="$out/rom.sqfs" of="$img" bs=1M seek=1 conv=notrunc status=none
        ;;
    esac

    mv "$img" "$out/storage.img"

    local kernel=$kdir/vmlinuz
    [ -f "$kdir/vmlinux-pvh" ] && kernel=$kdir/vmlinux-pvh
    cp "$kernel" "$out/kernel"
    printf 'RELEASE=%s\nROM_BYTES=%s\n' "$release" "$rom_bytes" > "$out/env"
    rm -rf "$work"
    say "[$BOARD] ready: $(du -h "$out/initramfs.img" | cut -f1) initramfs, $(du -h "$out/rom.sqfs" | cut -f1) ROM"
}

mkdir -p "$CACHE"
# Man pages and completions from ovl's clap definitions, for every ROM: a host build (xtask/),
# so the device binary carries no generator. A directory of this run's own: another build may
# be copying from its own at the same time.
say "man pages and shell completions (xtask docs)"
DOCS=$(mktemp -d "$CACHE/tmp.docs.XXXXXX")
(cd "$REPO" && cargo run --quiet --manifest-path xtask/Cargo.toml --release -- docs "$DOCS")
for b in "$@"; do build_board "$b"; done
rm -rf "$DOCS"
