#!/usr/bin/env bash
# qemu-arm/kernel-smoke.sh - prove that the kernels prepared by kernel.sh boot and load their
# modules on the emulated boards.
#
# Usage: qemu-arm/kernel-smoke.sh [ARCH...]      ARCH: arm64 amd64 armhf, or "all"
#                                                (default: arm64 amd64)
#
# For each ARCH: runs kernel.sh (cached, so usually instant), builds a tiny initramfs with a
# static busybox for that arch, the flat modules/ directory and an /init that insmods
# modules.order (passing <module>.<param>= values from the kernel command line, as modprobe
# would), prints /proc/mtd or the block devices and the relevant /proc/filesystems lines,
# exercises the filesystems a little, then powers off. Each boot runs under `timeout 120`.
#   arm64/armhf: -M virt, one CFI NOR bank (pflash unit 1, 64 MiB): the first 16 MiB hold a
#                squashfs (if mksquashfs exists, else 0xFF), the rest is erased (0xFF), split by
#                cmdlinepart.mtdparts=0.flash:64m(bank0)ro,16m(rootfs)ro,-(rootfs_data);
#                plus one virtio disk with ext4.
#   amd64:       -M pc, one virtio disk with ext4 (holding a squashfs file if mksquashfs
#                exists); booted once with vmlinux-pvh (if present) and once with vmlinuz.
# Exits non-zero if a boot misses an expected result. Full console logs are kept in
# $CACHE/kernels/smoke/<arch>*.log.

set -Eeuo pipefail

SELF_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SELF_DIR/.." && pwd)
CACHE=${OVL_CACHE:-$REPO/.cache}
KDIR=$CACHE/kernels
SMOKE=$KDIR/smoke
MTDPARTS='0.flash:64m(bank0)ro,16m(rootfs)ro,-(rootfs_data)'

log() { printf '[smoke] %s\n' "$*" >&2; }
die() {
  printf '[smoke] ERROR: %s\n' "$*" >&2
  exit 1
}
trap 'rc=$?; printf "[smoke] ERROR: %s:%s: command failed (exit %s): %s\n" "${BASH_SOURCE[0]##*/}" "$LINENO" "$rc" "$BASH_COMMAND" >&2' ERR

TMP_PATHS=()
cleanup() {
  local p
  for p in ${TMP_PATHS[@]+"${TMP_PATHS[@]}"}; do rm -rf -- "$p"; done
}
trap cleanup EXIT

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "root privileges needed to run: $*"
  fi
}
is_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == *" ok installed" ]]; }
ensure_pkgs() {
  local p missing=()
  for p in "$@"; do is_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return 0
  log "installing host packages: ${missing[*]} ..."
  local cmd=(env DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends "${missing[@]}")
  if ! as_root "${cmd[@]}" >/dev/null 2>&1; then
    as_root apt-get -q update >/dev/null
    as_root "${cmd[@]}" >/dev/null
  fi
}

apt_opts=(-q)
[ "$(id -u)" = 0 ] && apt_opts+=(-o APT::Sandbox::User=root)

# fetch_busybox ARCH -> prints the path of a static busybox for ARCH (cached)
fetch_busybox() {
  local a=$1 env=() f d
  d=$SMOKE/busybox-$a
  if [ -x "$d/bin/busybox" ]; then
    printf '%s\n' "$d/bin/busybox"
    return 0
  fi
  if [ "$a" = armhf ]; then
    [ -f "$KDIR/apt-armhf/apt.conf" ] || die "no private armhf apt configuration (run kernel.sh armhf first)"
    env=(env "APT_CONFIG=$KDIR/apt-armhf/apt.conf")
  fi
  log "downloading busybox-static:$a ..."
  rm -rf "$d.dl"
  mkdir -p "$d.dl"
  TMP_PATHS+=("$d.dl")
  if ! (cd "$d.dl" && ${env[@]+"${env[@]}"} apt-get "${apt_opts[@]}" download "busybox-static:$a") >/dev/null 2>&1; then
    if [ "$a" = armhf ]; then
      ${env[@]+"${env[@]}"} apt-get -q update >/dev/null 2>&1 || true
    else
      as_root apt-get -q update >/dev/null
    fi
    (cd "$d.dl" && ${env[@]+"${env[@]}"} apt-get "${apt_opts[@]}" download "busybox-static:$a") >/dev/null ||
      die "cannot download busybox-static:$a"
  fi
  f=$(ls "$d.dl"/busybox-static_*.deb | head -n1)
  rm -rf "$d"
  dpkg-deb -x "$f" "$d.dl/x"
  mkdir -p "$d/bin"
  cp "$d.dl/x/bin/busybox" "$d/bin/busybox"
  rm -rf "$d.dl"
  printf '%s\n' "$d/bin/busybox"
}

# The guest's /init. @ARCH@ is replaced.
write_init() {
  cat >"$1" <<'EOF'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /mnt /bin /sbin
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "SMOKE: init running on $(uname -m), kernel $(uname -r)"
t0=$(cut -d' ' -f1 /proc/uptime)
n=0
for m in $(cat /lib/modules/modules.order); do
  # finit_module does not apply <module>.<param>= from the command line: pass them like modprobe.
  p=""
  for w in $(cat /proc/cmdline); do
    case $w in "$m".*) p="$p ${w#"$m".}" ;; esac
  done
  if insmod "/lib/modules/$m.ko" $p 2>/tmp/insmod.err; then
    n=$((n + 1))
  else
    echo "SMOKE: insmod $m FAILED: $(cat /tmp/insmod.err)"
  fi
done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "SMOKE: loaded $n modules (uptime $t0 -> $t1 s)"
ARCH=@ARCH@
if [ -e /proc/mtd ]; then
  echo "=== /proc/mtd"
  cat /proc/mtd
fi
echo "=== ls /sys/class/block"
ls /sys/class/block
echo "=== /proc/filesystems | grep -E 'jffs2|overlay|squashfs|ext4'"
grep -E 'jffs2|overlay|squashfs|ext4' /proc/filesystems
echo "=== functional checks"
disk=""
for b in /sys/class/block/vd*; do
  [ -e "$b" ] || continue
  [ "$(cat "$b/serial" 2>/dev/null)" = smoke ] && disk=/dev/${b##*/}
done
[ -n "$disk" ] || disk=/dev/vda
mkdir -p /data /rom /lower /merged
if mount -t ext4 "$disk" /data; then
  echo "SMOKE: ext4 mount OK ($disk: $(cat /data/hello 2>/dev/null))"
  upper=/data
  if [ -f /data/rom.sqfs ] && [ -e /dev/loop-control ]; then
    mount -t squashfs -o loop,ro /data/rom.sqfs /rom && echo "SMOKE: squashfs via loop OK ($(cat /rom/etc/banner))"
  fi
else
  echo "SMOKE: ext4 mount FAILED"
fi
if [ -e /proc/mtd ] && grep -q rootfs_data /proc/mtd; then
  ro=$(sed -n 's/^mtd\([0-9]*\):.*"rootfs"$/\1/p' /proc/mtd)
  [ -n "$ro" ] && mount -t squashfs -o ro "/dev/mtdblock$ro" /rom 2>/dev/null &&
    echo "SMOKE: squashfs on mtdblock$ro OK ($(cat /rom/etc/banner))"
  mkdir -p /jffs
  if mount -t jffs2 mtd:rootfs_data /jffs; then
    echo "SMOKE: jffs2 mount of rootfs_data OK"
    upper=/jffs
  else
    echo "SMOKE: jffs2 mount FAILED"
  fi
fi
[ -f /rom/etc/banner ] || { mkdir -p /rom/etc; echo "tmp lower" >/rom/etc/banner; }
if [ -n "${upper:-}" ]; then
  mkdir -p "$upper/upper" "$upper/work"
  if mount -t overlay overlay -o "lowerdir=/rom,upperdir=$upper/upper,workdir=$upper/work" /merged; then
    echo written >/merged/etc/new-file && rm /merged/etc/banner &&
      echo "SMOKE: overlay OK (upper $upper: $(ls -A "$upper/upper/etc" | tr '\n' ' '))"
  else
    echo "SMOKE: overlay mount FAILED"
  fi
fi
echo "SMOKE: done, uptime $(cut -d' ' -f1 /proc/uptime) s"
sync
poweroff -f
EOF
  sed -i "s/@ARCH@/$2/" "$1"
  chmod 755 "$1"
}

# make_initrd ARCH OUT
make_initrd() {
  local a=$1 out=$2 kd=$KDIR/$1 r bb
  bb=$(fetch_busybox "$a")
  r=$SMOKE/initrd-$a.d
  rm -rf "$r"
  TMP_PATHS+=("$r")
  mkdir -p "$r"/{bin,dev,proc,sys,tmp,lib/modules}
  cp "$bb" "$r/bin/busybox"
  cp "$kd"/modules/*.ko "$r/lib/modules/"
  cp "$kd/modules.order" "$r/lib/modules/modules.order"
  as_root mknod -m 600 "$r/dev/console" c 5 1
  write_init "$r/init" "$a"
  (cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$out"
}

# make_disk OUT: 32 MiB ext4 (serial "smoke" is set on the qemu side) with a squashfs file
make_disk() {
  local out=$1 d
  d=$SMOKE/disk.d
  rm -rf "$d"
  TMP_PATHS+=("$d")
  mkdir -p "$d/content" "$d/sq/etc"
  echo "hello from the host" >"$d/content/hello"
  echo "squashfs lower" >"$d/sq/etc/banner"
  if command -v mksquashfs >/dev/null; then
    mksquashfs "$d/sq" "$d/content/rom.sqfs" -comp xz -noappend -quiet >/dev/null
  fi
  rm -f "$out"
  truncate -s 32M "$out"
  mkfs.ext4 -q -F -L smoke -d "$d/content" "$out" >/dev/null
}

# make_flash OUT: 64 MiB NOR bank, squashfs in the first 16 MiB (rootfs), rest erased (0xFF)
make_flash() {
  local out=$1 d
  rm -f "$out"
  head -c $((64 << 20)) /dev/zero | tr '\0' '\377' >"$out"
  if command -v mksquashfs >/dev/null; then
    d=$SMOKE/flash.d
    rm -rf "$d"
    TMP_PATHS+=("$d")
    mkdir -p "$d/sq/etc"
    echo "squashfs on NOR" >"$d/sq/etc/banner"
    mksquashfs "$d/sq" "$d/rom.sqfs" -comp xz -noappend -quiet >/dev/null
    dd if="$d/rom.sqfs" of="$out" conv=notrunc status=none
  fi
}

FAILED=()
RESULTS=()

# boot NAME LOGFILE CHECKS QEMU-ARGS...: run, time, show the excerpt, check for expected lines.
boot() {
  local name=$1 logf=$2 checks=$3 t0 t1 secs rc=0 c
  shift 3
  log "booting $name ..."
  t0=$(date +%s%N)
  timeout 120 "$@" </dev/null >"$logf.raw" 2>&1 || rc=$?
  t1=$(date +%s%N)
  tr -d '\r' <"$logf.raw" >"$logf"
  rm -f "$logf.raw"
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", (b - a) / 1e9}')
  sed -n '/^SMOKE: init running/,$p' "$logf" | grep -vE '^\[ *[0-9]+\.[0-9]+\]' | sed 's/^/    /' >&2
  local ok=1
  [ "$rc" = 0 ] || {
    log "$name: qemu exited with $rc$([ "$rc" = 124 ] && echo ' (timeout)')"
    ok=0
  }
  while IFS= read -r c; do
    [ -n "$c" ] || continue
    grep -qE -- "$c" "$logf" || {
      log "$name: expected output missing: $c"
      ok=0
    }
  done <<<"$checks"
  if grep -q 'SMOKE: .*FAILED' "$logf"; then
    log "$name: failures reported by the guest:"
    grep 'SMOKE: .*FAILED' "$logf" | sed 's/^/    /' >&2
    ok=0
  fi
  if [ "$ok" = 1 ]; then
    log "$name: OK, wall time ${secs} s (log: $logf)"
    RESULTS+=("$name OK ${secs}s")
  else
    log "$name: FAILED, wall time ${secs} s (log: $logf)"
    RESULTS+=("$name FAILED ${secs}s")
    FAILED+=("$name")
  fi
}

smoke_arch() {
  local a=$1 kd=$KDIR/$1 initrd disk flash fs_checks qemu con
  initrd=$SMOKE/initrd-$a.cpio.gz
  disk=$SMOKE/disk-$a.img
  make_initrd "$a" "$initrd"
  make_disk "$disk"
  case $a in
    arm64 | armhf)
      flash=$SMOKE/flash-$a.img
      make_flash "$flash"
      if [ "$a" = arm64 ]; then
        qemu=(qemu-system-aarch64 -M virt -cpu cortex-a53)
        con=ttyAMA0
      else
        qemu=(qemu-system-arm -M virt -cpu cortex-a15)
        con=ttyAMA0
      fi
      fs_checks='"rootfs"$
"rootfs_data"$
^nodev[[:space:]]+overlay
squashfs
ext4
jffs2
SMOKE: jffs2 mount of rootfs_data OK
SMOKE: ext4 mount OK
SMOKE: overlay OK
SMOKE: done'
      boot "$a" "$SMOKE/$a.log" "$fs_checks" "${qemu[@]}" -accel tcg -m 256M -nographic -no-reboot \
        -kernel "$kd/vmlinuz" -initrd "$initrd" \
        -append "console=$con panic=-1 cmdlinepart.mtdparts=$MTDPARTS" \
        -drive "if=pflash,unit=1,format=raw,file=$flash" \
        -drive "if=none,id=d0,format=raw,file=$disk" -device virtio-blk-device,drive=d0,serial=smoke
      ;;
    amd64)
      fs_checks='^nodev[[:space:]]+overlay
squashfs
ext4
(^|[[:space:]])vda([[:space:]]|$)
SMOKE: ext4 mount OK
SMOKE: overlay OK
SMOKE: done'
      local k kernels=()
      [ -f "$kd/vmlinux-pvh" ] && kernels+=(vmlinux-pvh)
      kernels+=(vmlinuz)
      for k in "${kernels[@]}"; do
        make_disk "$disk"
        boot "amd64-$k" "$SMOKE/amd64-$k.log" "$fs_checks" qemu-system-x86_64 -M pc -accel tcg -m 256M \
          -nographic -no-reboot -kernel "$kd/$k" -initrd "$initrd" \
          -append 'console=ttyS0 panic=-1' \
          -drive "if=none,id=d0,format=raw,file=$disk" -device virtio-blk-pci,drive=d0,serial=smoke
      done
      ;;
  esac
}

main() {
  local arches=() a
  while [ $# -gt 0 ]; do
    case $1 in
      -h | --help)
        sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
      all) arches+=(arm64 amd64 armhf) ;;
      arm64 | amd64 | armhf) arches+=("$1") ;;
      *) die "unknown argument '$1'" ;;
    esac
    shift
  done
  [ ${#arches[@]} -gt 0 ] || arches=(arm64 amd64)

  "$SELF_DIR/kernel.sh" "${arches[@]}"
  local pk=(cpio gzip e2fsprogs)
  for a in "${arches[@]}"; do
    case $a in
      arm64 | armhf) pk+=(qemu-system-arm) ;;
      amd64) pk+=(qemu-system-x86) ;;
    esac
  done
  ensure_pkgs "${pk[@]}"
  command -v mksquashfs >/dev/null || log "mksquashfs not found (package squashfs-tools): squashfs images are skipped"
  mkdir -p "$SMOKE"
  for a in "${arches[@]}"; do smoke_arch "$a"; done
  log "summary:"
  printf '    %s\n' "${RESULTS[@]}" >&2
  [ ${#FAILED[@]} = 0 ] || die "failed: ${FAILED[*]}"
}

main "$@"
