#!/usr/bin/env bash
# qemu-arm/kernel.sh - prepare real Debian kernels and kernel modules for the emulated boards.
#
# Usage: qemu-arm/kernel.sh [-f|--force] [-h|--help] [ARCH...]
#   ARCH: arm64 amd64 armhf, or "all" (default: arm64 amd64)
#
# For each ARCH it resolves, at run time, the newest consistent Debian kernel set (image, and
# for arches that need extra MTD modules also headers, kbuild and linux-source of exactly the
# same version), downloads it with `apt-get download`, builds the MTD drivers the stock config
# lacks out of tree, and lays out (the contract other scripts rely on):
#
#   $CACHE/kernels/<arch>/vmlinuz         kernel for `qemu-system-* -kernel`
#   $CACHE/kernels/amd64/vmlinux-pvh      PVH ELF (bzImage payload), only if it was seen booting
#   $CACHE/kernels/<arch>/release         one line: the kernel release (uname -r)
#   $CACHE/kernels/<arch>/modules/*.ko    flat, uncompressed, named <module_name>.ko
#   $CACHE/kernels/<arch>/modules.order   module names, dependencies first (insmod in this order);
#                                         modules/ may hold a few optional extras not listed
#                                         here (amd64: crc32c_intel, see OPTIONAL_MODULES_amd64)
#   $CACHE/kernels/<arch>/config          the kernel's config
#
# $CACHE is ${OVL_CACHE:-<repo>/.cache}. A second run only checks apt's package lists and exits;
# it rebuilds when the resolved versions, the module list or RECIPE change (or with --force).
#
# Environment:
#   OVL_CACHE                  cache root (default: <repo>/.cache)
#   OVL_KERNEL_JOBS            make -j value (default 2)
#   OVL_KERNEL_OFFLINE=1       do not touch apt at all; use what is already laid out
#   OVL_KERNEL_MODULES_ARM64   space-separated module list replacing the default (same for
#   OVL_KERNEL_MODULES_AMD64   the other arches); dependencies are added automatically
#   OVL_KERNEL_MODULES_ARMHF
#   OVL_KERNEL_KEEP_BUILD=1    keep $CACHE/kernels/build/<arch> (extracted debs, objects)
#
# Needs root (or passwordless sudo) only to apt-get install missing tools and to add the arm64
# dpkg architecture. armhf packages are fetched through a private APT configuration under the
# cache, because adding armhf as a system architecture breaks `apt-get update` on these hosts.

set -Eeuo pipefail

# Bump when the way outputs are produced changes, so cached outputs get rebuilt.
RECIPE=5

SELF_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd -- "$SELF_DIR/.." && pwd)
CACHE=${OVL_CACHE:-$REPO/.cache}
KDIR=$CACHE/kernels
JOBS=${OVL_KERNEL_JOBS:-2}
FORCE=0

# Modules the boards load. Their dependencies (including soft dependencies) are added by
# depmod/modprobe; modules that are built in are dropped. Order matters beyond depmod's view
# for the MTD stack: chip probes and the partition parser must be loaded before physmap binds.
# shellcheck disable=SC2034 # used through eval in set_arch
DEFAULT_MODULES_arm64="mtd chipreg cfi_util gen_probe cfi_cmdset_0001 cfi_probe cmdlinepart physmap
  mtd_blkdevs mtdblock jffs2 squashfs overlay virtio_mmio virtio_blk crc32c_generic jbd2 mbcache
  crc16 ext4 ubi zstd_compress zstd ubifs"
# shellcheck disable=SC2034
# nandsim: the NAND board keeps its UBI in RAM (arm64 has no nandsim).
DEFAULT_MODULES_armhf="$DEFAULT_MODULES_arm64 deflate nandsim"
# shellcheck disable=SC2034
DEFAULT_MODULES_amd64="virtio virtio_ring virtio_pci virtio_blk loop squashfs overlay jbd2 mbcache
  crc16 crc32c_generic crc32c_intel ext4"
# Modules copied into modules/ but left out of modules.order, because they cannot load on the
# boards' default CPU: crc32c_intel needs SSE4.2, which QEMU's default TCG x86 CPU (qemu64)
# lacks (insmod fails with ENODEV); crc32c_generic provides crc32c there.
# shellcheck disable=SC2034
OPTIONAL_MODULES_amd64="crc32c_intel"
# Same for crc32_arm_ce (a soft dependency of jbd2/ext4 via crypto-crc32c on armmp): it needs the
# ARMv8 CRC32 instructions, which the board's cortex-a15 lacks.
# shellcheck disable=SC2034
OPTIONAL_MODULES_armhf="crc32_arm_ce"

# MTD drivers built out of tree when the stock config lacks (neither =y nor =m) any of the
# listed config symbols; the -D flags turn on what is missing (physmap: armmp ships physmap.ko
# without device-tree support, which the virt board's flash needs):
#   module|config symbols|source files under drivers/mtd|object files|extra cflags
MTD_BUILD_SPECS=(
  "cmdlinepart|MTD_CMDLINE_PARTS|parsers/cmdlinepart.c|cmdlinepart.o|"
  "cfi_util|MTD_CFI_UTIL|chips/cfi_util.c|cfi_util.o|"
  "gen_probe|MTD_GEN_PROBE|chips/gen_probe.c|gen_probe.o|"
  "cfi_probe|MTD_CFI|chips/cfi_probe.c|cfi_probe.o|"
  "cfi_cmdset_0001|MTD_CFI_INTELEXT|chips/cfi_cmdset_0001.c chips/fwh_lock.h|cfi_cmdset_0001.o|"
  "physmap|MTD_PHYSMAP MTD_PHYSMAP_OF|maps/physmap-core.c maps/physmap-*.h|physmap-core.o|-DCONFIG_MTD_PHYSMAP_OF=1"
)

log() { printf '[kernel] %s\n' "$*" >&2; }
warn() { printf '[kernel] WARNING: %s\n' "$*" >&2; }
die() {
  printf '[kernel] ERROR: %s\n' "$*" >&2
  exit 1
}
# die_unavailable: the packages could not be resolved or fetched (network, archive, apt lists);
# an arch that was prepared before is then kept instead of failing.
EX_UNAVAILABLE=75
die_unavailable() {
  printf '[kernel] ERROR: %s\n' "$*" >&2
  exit "$EX_UNAVAILABLE"
}
on_err() { printf '[kernel] ERROR: %s:%s: command failed (exit %s): %s\n' "${BASH_SOURCE[1]##*/}" "$2" "$1" "$3" >&2; }
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

TMP_PATHS=()
cleanup() {
  local p
  for p in ${TMP_PATHS[@]+"${TMP_PATHS[@]}"}; do rm -rf -- "$p"; done
}
trap cleanup EXIT

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

# ---------------------------------------------------------------------------------------------
# small helpers

LOG=/dev/null
# run_logged DESCRIPTION CMD...: run CMD with its output in $LOG; on failure show the tail.
run_logged() {
  local desc=$1 rc=0
  shift
  printf '\n### %s\n$ %s\n' "$desc" "$*" >>"$LOG"
  "$@" >>"$LOG" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    tail -n 40 "$LOG" | sed 's/^/[kernel]   | /' >&2
    die "$desc failed (exit $rc); full log: $LOG"
  fi
}

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "root privileges needed to run: $*  (run this script as root, or install that yourself)"
  fi
}

apt_opts=(-q)
[ "$(id -u)" = 0 ] && apt_opts+=(-o APT::Sandbox::User=root)

APT_UPDATED=0
apt_update() {
  [ "$APT_UPDATED" = 1 ] && return 0
  log "refreshing apt package lists (apt-get update) ..."
  local out rc=0
  out=$(as_root apt-get "${apt_opts[@]}" update 2>&1) || rc=$?
  printf '\n### apt-get update\n%s\n' "$out" >>"$LOG"
  APT_UPDATED=1
  [ "$rc" = 0 ] && return 0
  # apt-get update fails as a whole when one index fails; what did arrive is still usable.
  printf '%s\n' "$out" | grep -E '^(E|W|Err):' | sed 's/^/[kernel]   | /' >&2 || true
  warn "apt-get update reported errors (exit $rc); continuing with the package lists apt has"
}

is_installed() { [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == *" ok installed" ]]; }

ensure_pkgs() {
  local p missing=()
  for p in "$@"; do is_installed "$p" || missing+=("$p"); done
  [ ${#missing[@]} = 0 ] && return 0
  log "installing host packages: ${missing[*]} ..."
  local cmd=(env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}")
  if ! as_root "${cmd[@]}" >>"$LOG" 2>&1; then
    apt_update
    run_logged "apt-get install ${missing[*]}" as_root "${cmd[@]}"
  fi
}

HOST_ARCH=$(dpkg --print-architecture 2>/dev/null) || die "dpkg not found: this script needs a Debian-like host"

ensure_foreign_arch() {
  local a=$1
  [ "$a" = "$HOST_ARCH" ] && return 0
  grep -qx "$a" <<<"$(dpkg --print-foreign-architectures)" && return 0
  log "adding dpkg foreign architecture $a ..."
  as_root dpkg --add-architecture "$a"
  APT_UPDATED=0
  apt_update
}

# ---------------------------------------------------------------------------------------------
# apt contexts: "sys" is the host's apt; "priv" is a private configuration for one foreign
# architecture (armhf) that leaves the host's apt alone.

PRIV_DIR=
PRIV_UPDATED=0
setup_private_apt() {
  local a=$1
  PRIV_DIR=$KDIR/apt-$a
  mkdir -p "$PRIV_DIR"/{lists/partial,cache/archives/partial,sources.list.d,preferences.d}
  [ -f "$PRIV_DIR/status" ] || : >"$PRIV_DIR/status"
  # The same Debian repositories the host uses, restricted to architecture $a.
  local src
  src=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
    'Identifier: Packages' "Architecture: $HOST_ARCH" 'Origin: Debian' 2>/dev/null | sort -u |
    awk -v a="$a" 'NF==3 {print "deb [arch=" a "] " $1 " " $2 " " $3}')
  if [ -z "$src" ]; then
    apt_update
    src=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
      'Identifier: Packages' "Architecture: $HOST_ARCH" 'Origin: Debian' 2>/dev/null | sort -u |
      awk -v a="$a" 'NF==3 {print "deb [arch=" a "] " $1 " " $2 " " $3}')
  fi
  [ -n "$src" ] || die "cannot derive Debian repositories from the host's apt sources for $a"
  printf '%s\n' "$src" >"$PRIV_DIR/sources.list.new"
  if ! cmp -s "$PRIV_DIR/sources.list.new" "$PRIV_DIR/sources.list"; then
    mv "$PRIV_DIR/sources.list.new" "$PRIV_DIR/sources.list"
    rm -f "$PRIV_DIR/lists/"*_Packages* 2>/dev/null || true
  else
    rm -f "$PRIV_DIR/sources.list.new"
  fi
  cat >"$PRIV_DIR/apt.conf" <<EOF
APT::Architecture "$a";
APT::Architectures { "$a"; };
Dir::State "$PRIV_DIR";
Dir::State::Lists "$PRIV_DIR/lists";
Dir::State::status "$PRIV_DIR/status";
Dir::Cache "$PRIV_DIR/cache";
Dir::Etc::SourceList "$PRIV_DIR/sources.list";
Dir::Etc::SourceParts "$PRIV_DIR/sources.list.d";
Dir::Etc::PreferencesParts "$PRIV_DIR/preferences.d";
Acquire::Languages "none";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled "false";
Acquire::IndexTargets::deb::CNF::DefaultEnabled "false";
APT::Sandbox::User "root";
EOF
  [ "$(id -u)" = 0 ] || sed -i '/Sandbox/d' "$PRIV_DIR/apt.conf"
  # Nobody else refreshes these lists: do it when missing or older than a day.
  if ! ls "$PRIV_DIR/lists/"*_Packages* >/dev/null 2>&1 ||
    [ -z "$(find "$PRIV_DIR/updated" -mmin -1440 2>/dev/null)" ]; then
    priv_update
  fi
}

priv_update() {
  [ "$PRIV_UPDATED" = 1 ] && return 0
  local a=${PRIV_DIR##*/apt-} out rc=0
  log "refreshing private apt lists for $a ..."
  out=$(env APT_CONFIG="$PRIV_DIR/apt.conf" apt-get -q update 2>&1) || rc=$?
  printf '\n### apt-get update (private, %s)\n%s\n' "$a" "$out" >>"$LOG"
  PRIV_UPDATED=1
  touch "$PRIV_DIR/updated"
  printf '%s\n' "$out" | sed -n 's/^E: Failed to fetch \([^ ]*\) *\(.*\)/\1: \2/p' >"$PRIV_DIR/failed-indexes"
  [ "$rc" = 0 ] && return 0
  # Some indexes of some archives fail here (e.g. bookworm-security's armhf Packages comes with
  # the wrong size); work with the indexes that did arrive.
  ls "$PRIV_DIR/lists/"*_Packages* >/dev/null 2>&1 || {
    printf '%s\n' "$out" | tail -n 20 | sed 's/^/[kernel]   | /' >&2
    die "apt-get update for $a failed and no package index is available"
  }
  while IFS= read -r l; do warn "$a: index unavailable, ignored: $l"; done <"$PRIV_DIR/failed-indexes"
}

# actx CTX TOOL ARGS...: run apt tool TOOL (apt-cache, apt-get) in context CTX (sys|priv).
# Hosts built from container images often disable apt's binary package cache, which makes every
# apt-cache call re-parse all lists (about a second each); keep a cache of our own instead.
actx() {
  local c=$1 tool=$2 d=$KDIR/apt-pkgcache
  shift 2
  [ "$c" = priv ] && d=$PRIV_DIR/pkgcache
  mkdir -p "$d"
  local o=(-o "Dir::Cache::pkgcache=$d/pkgcache.bin" -o "Dir::Cache::srcpkgcache=$d/srcpkgcache.bin")
  if [ "$c" = priv ]; then
    APT_CONFIG="$PRIV_DIR/apt.conf" "$tool" "${o[@]}" "$@"
  else
    "$tool" "${o[@]}" "$@"
  fi
}
ctx_update() { if [ "$1" = priv ]; then priv_update; else apt_update; fi; }

# has_version CTX PKG VERSION
has_version() {
  actx "$1" apt-cache madison "$2" 2>/dev/null |
    awk -F'|' -v v="$3" '{gsub(/ /, "", $2)} $2 == v {f = 1} END {exit !f}'
}
# field CTX PKG=VER FIELD -> first value of FIELD
field() {
  actx "$1" apt-cache show "$2" 2>/dev/null | sed -n "s/^$3: //p" | head -n1 || true
}

# ---------------------------------------------------------------------------------------------
# per-arch settings

set_arch() {
  A=$1
  case $A in
    arm64)
      FLAV=arm64 TRIPLET=aarch64-linux-gnu KARCH=arm64 CTX=sys NEED_BUILD=1
      ;;
    amd64)
      FLAV=amd64 TRIPLET=x86_64-linux-gnu KARCH=x86 CTX=sys NEED_BUILD=0
      ;;
    armhf)
      FLAV=armmp TRIPLET=arm-linux-gnueabihf KARCH=arm CTX=priv NEED_BUILD=1
      ;;
    *) die "unknown arch '$A' (expected arm64, amd64, armhf or all)" ;;
  esac
  local uc var
  uc=$(printf '%s' "$A" | tr '[:lower:]' '[:upper:]')
  var=OVL_KERNEL_MODULES_$uc
  eval "WANT_MODULES=\${$var:-\$DEFAULT_MODULES_$A}"
  eval "OPTIONAL_MODULES=\${OPTIONAL_MODULES_$A:-}"
  WANT_MODULES=$(printf '%s\n' $WANT_MODULES | paste -sd' ')
  OUT=$KDIR/$A
}

# ---------------------------------------------------------------------------------------------
# resolution: sets ABI VER REL and PKGS (entries "ctx|name|qualifier|version")

resolve_once() {
  local meta dep abi
  ABI='' VER='' REL=''
  PKGS=()
  meta=linux-image-$FLAV
  [ "$CTX" = sys ] && meta=$meta:$A
  dep=$(actx "$CTX" apt-cache show --no-all-versions "$meta" 2>/dev/null | sed -n 's/^Depends: //p' |
    tr ',|' '\n\n' | sed 's/^ *//; s/[ :(].*//' | grep -E "^linux-image-.+-$FLAV(-unsigned)?$" | head -n1 || true)
  [ -n "$dep" ] || return 1
  abi=${dep#linux-image-}
  abi=${abi%-unsigned}
  abi=${abi%-"$FLAV"}
  resolve_abi "$abi" && return 0
  # The metapackage's target is inconsistent (e.g. a mirror is mid-sync): fall back to the
  # newest ABI of the same series for which every piece exists in one version.
  local series=${abi%%-*} cands a
  cands=$(actx "$CTX" apt-cache pkgnames "linux-headers-$series-" 2>/dev/null |
    sed -n "s/^linux-headers-\(${series//./\\.}-[^-]*\)-common\$/\1/p" | sort -rV || true)
  for a in $cands; do
    [ "$a" = "$abi" ] && continue
    resolve_abi "$a" && {
      warn "$A: metapackage points at $abi, which is incomplete; using $a"
      return 0
    }
  done
  return 1
}

# resolve_abi ABI: newest version of that ABI's image for which all needed pieces exist.
resolve_abi() {
  local abi=$1 img q="" ver hdr common kbuild src hdeps series versions
  [ "$CTX" = sys ] && q=":$A"
  img=linux-image-$abi-$FLAV-unsigned
  if [ -z "$(actx "$CTX" apt-cache madison "$img$q" 2>/dev/null)" ]; then
    img=linux-image-$abi-$FLAV
  fi
  versions=$(actx "$CTX" apt-cache madison "$img$q" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | sort -ruV)
  [ -n "$versions" ] || return 1
  for ver in $versions; do
    PKGS=("$CTX|$img|$q|$ver")
    if [ "$NEED_BUILD" = 1 ]; then
      hdr=linux-headers-$abi-$FLAV
      has_version "$CTX" "$hdr$q" "$ver" || continue
      hdeps=$(field "$CTX" "$hdr$q=$ver" Depends | tr ',' '\n' | sed 's/^ *//; s/[ :(].*//')
      common=$(printf '%s\n' "$hdeps" | grep -E '^linux-headers-.*-common$' | head -n1 || true)
      kbuild=$(printf '%s\n' "$hdeps" | grep -E '^linux-kbuild-' | head -n1 || true)
      [ -n "$common" ] && [ -n "$kbuild" ] || continue
      has_version "$CTX" "$common" "$ver" || continue
      # kbuild runs on the build host: always the host's architecture, from the host's apt.
      has_version sys "$kbuild:$HOST_ARCH" "$ver" || continue
      series=$(printf '%s' "$ver" | sed -E 's/^([0-9]+\.[0-9]+).*/\1/')
      src=linux-source-$series
      has_version "$CTX" "$src" "$ver" || continue
      PKGS+=("$CTX|$hdr|$q|$ver" "$CTX|$common||$ver" "sys|$kbuild|:$HOST_ARCH|$ver" "$CTX|$src||$ver")
    fi
    # shellcheck disable=SC2034 # ABI is informational
    ABI=$abi VER=$ver REL=$abi-$FLAV
    return 0
  done
  return 1
}

resolve() {
  if resolve_once; then return 0; fi
  ctx_update "$CTX"
  [ "$CTX" = priv ] && apt_update
  resolve_once || die_unavailable "$A: could not resolve a consistent Debian kernel set for flavour $FLAV (image$([ "$NEED_BUILD" = 1 ] && echo ', headers, kbuild, linux-source') of one version) from apt"
}

# ---------------------------------------------------------------------------------------------
# downloads

DEB_FILES=()
# fetch_debs: make sure every entry of PKGS is in $KDIR/debs with the archive's checksum.
fetch_debs() {
  local e ctx name q ver arch sha size file have retried
  DEB_FILES=()
  mkdir -p "$KDIR/debs"
  for e in "${PKGS[@]}"; do
    IFS='|' read -r ctx name q ver <<<"$e"
    arch=$(field "$ctx" "$name$q=$ver" Architecture)
    sha=$(field "$ctx" "$name$q=$ver" SHA256)
    size=$(field "$ctx" "$name$q=$ver" Size)
    [ -n "$arch" ] && [ -n "$sha" ] || die_unavailable "apt knows no $name$q=$ver"
    file=${name}_${ver//:/%3a}_$arch.deb
    have=0
    if [ -f "$KDIR/debs/$file" ]; then
      if [ "$(sha256sum "$KDIR/debs/$file" | cut -d' ' -f1)" = "$sha" ]; then
        have=1
      else
        warn "cached $file has a wrong checksum; downloading it again"
        rm -f "$KDIR/debs/$file"
      fi
    fi
    if [ "$have" = 0 ]; then
      log "downloading $name $ver ($arch, $((${size:-0} / 1048576)) MiB) ..."
      retried=0
      while ! (cd "$KDIR/debs" && actx "$ctx" apt-get "${apt_opts[@]}" download "$name$q=$ver") >>"$LOG" 2>&1; do
        [ "$retried" = 0 ] || {
          tail -n 20 "$LOG" | sed 's/^/[kernel]   | /' >&2
          die_unavailable "downloading $name$q=$ver failed; full log: $LOG"
        }
        retried=1
        warn "download of $name failed; refreshing package lists and retrying"
        ctx_update "$ctx"
      done
      [ -f "$KDIR/debs/$file" ] || die "apt-get download did not produce $file"
      [ "$(sha256sum "$KDIR/debs/$file" | cut -d' ' -f1)" = "$sha" ] || die "checksum mismatch for $file"
    fi
    DEB_FILES+=("$file")
  done
}

# ---------------------------------------------------------------------------------------------
# building and laying out one arch

deb_of() { # deb_of PACKAGE-NAME -> path of its downloaded deb
  local f
  for f in "${DEB_FILES[@]}"; do
    case $f in "$1"_*) printf '%s\n' "$KDIR/debs/$f" && return 0 ;; esac
  done
  die "internal: no deb for $1"
}

cfg_state() { # cfg_state CONFIG SYMBOL -> y, m or n
  local v
  v=$(sed -n "s/^CONFIG_$2=//p" "$1" | head -n1)
  case $v in y | m) printf '%s' "$v" ;; *) printf 'n' ;; esac
}

build_mtd_modules() { # $1 build dir, $2 extracted root; prints nothing; leaves .ko in $1/mtd
  local target_bits=32
  local W=$1 root=$2 cfg=$2/boot/config-$REL hdrdir spec mod sym syms files objs flags f built=()
  case $W in *[[:space:]]*) die "kbuild cannot build in a path with white space: $W (set OVL_CACHE)" ;; esac
  # Keep the caller's make/kbuild settings (e.g. MAKEFLAGS from an outer make, LLVM=1) out.
  unset KBUILD_OUTPUT KBUILD_EXTMOD KCFLAGS KCPPFLAGS KAFLAGS LLVM LLVM_IAS MAKEFLAGS MFLAGS MAKELEVEL
  hdrdir=$root/usr/src/linux-headers-$REL
  [ -f "$hdrdir/Makefile" ] || die "headers for $REL missing in the headers deb"
  # The arch headers' Makefile includes the common headers by absolute /usr/src path.
  sed -i -E "s#^include /usr/src/#include $root/usr/src/#" "$hdrdir/Makefile"
  local inc
  inc=$(sed -n 's/^include //p' "$hdrdir/Makefile" | head -n1)
  [ -f "$inc" ] || die "headers Makefile includes $inc, which does not exist"

  local kb="$W/mtd/Kbuild"
  mkdir -p "$W/mtd"
  : >"$kb"
  for spec in "${MTD_BUILD_SPECS[@]}"; do
    IFS='|' read -r mod syms files objs flags <<<"$spec"
    local need=0
    for sym in $syms; do [ "$(cfg_state "$cfg" "$sym")" != n ] || need=1; done
    [ "$need" = 1 ] || continue
    for f in $files; do
      # shellcheck disable=SC2086
      cp $W/src/drivers/mtd/$f "$W/mtd/" || die "source file drivers/mtd/$f missing in linux-source"
    done
    printf 'obj-m += %s.o\n' "$mod" >>"$kb"
    if [ "$objs" != "$mod.o" ]; then printf '%s-y := %s\n' "$mod" "$objs" >>"$kb"; fi
    if [ -n "$flags" ]; then
      for f in $objs; do printf 'CFLAGS_%s := %s\n' "$f" "$flags" >>"$kb"; done
    fi
    built+=("$mod")
  done
  if [ ${#built[@]} = 0 ]; then
    log "$A: the stock config already has every MTD driver needed; nothing to build"
    return 0
  fi

  local gccver cc_pkgs=() cross=""
  gccver=$(sed -n 's/^CONFIG_GCC_VERSION=//p' "$cfg")
  gccver=$((gccver / 10000))
  [ "$gccver" -gt 0 ] || die "cannot tell which gcc built $REL"
  if [ "$A" != "$HOST_ARCH" ]; then
    cross=$TRIPLET-
    cc_pkgs=("gcc-$gccver-$TRIPLET" "binutils-$TRIPLET")
  else
    cc_pkgs=("gcc-$gccver")
  fi
  # Runtime libraries of the prebuilt kbuild tools (modpost, fixdep, ...).
  local kdeps
  kdeps=$(dpkg-deb -f "$(deb_of "${KBUILD_PKG}")" Depends | tr ',|' '\n\n' | sed 's/^ *//; s/[ (].*//' | sort -u)
  # shellcheck disable=SC2086
  ensure_pkgs make "${cc_pkgs[@]}" $kdeps
  command -v "${cross}gcc-$gccver" >/dev/null || die "${cross}gcc-$gccver not found after installing ${cc_pkgs[*]}"

  # Debian's kbuild modpost is compiled with the build host's struct layouts for device-ID
  # tables; for a target of another word size (armhf on amd64) it rejects any module with an
  # of_device_id table. Rebuild modpost from linux-source with the target's layouts.
  local host_bits
  host_bits=$(getconf LONG_BIT)
  [ "$(cfg_state "$cfg" 64BIT)" = y ] && target_bits=64
  if [ -n "$cross" ] && [ "$host_bits" != "$target_bits" ]; then
    rebuild_modpost "$W" "$hdrdir" "$cross" "$gccver"
  fi

  log "building MTD modules for $A: ${built[*]} ..."
  run_logged "make modules ($A)" make -C "$hdrdir" M="$W/mtd" ARCH="$KARCH" CROSS_COMPILE="$cross" \
    -j"$JOBS" modules
  for mod in "${built[@]}"; do
    [ -f "$W/mtd/$mod.ko" ] || die "build produced no $mod.ko"
  done
  run_logged "strip modules" "${cross}strip" --strip-debug "$W"/mtd/*.ko
  BUILT_MODULES=("${built[@]}")
}

# rebuild_modpost BUILDDIR HDRDIR CROSS GCCVER: modpost for the target's ELF class and
# device-table layouts (what the kernel's scripts/mod/Makefile does), installed over the
# extracted kbuild's modpost.
rebuild_modpost() {
  local W=$1 hdrdir=$2 cross=$3 gccver=$4 M=$1/src/scripts/mod d=$1/modpost
  log "$A: rebuilding modpost for a $target_bits-bit target ..."
  ensure_pkgs gcc libc6-dev
  rm -rf "$d"
  mkdir -p "$d/dto"
  run_logged "compile empty.o" "${cross}gcc-$gccver" -c -o "$d/empty.o" "$M/empty.c"
  run_logged "compile mk_elfconfig" gcc -O2 -o "$d/mk_elfconfig" "$M/mk_elfconfig.c"
  "$d/mk_elfconfig" <"$d/empty.o" >"$M/elfconfig.h"
  cp "$M/devicetable-offsets.c" "$d/dto/"
  echo 'obj-m :=' >"$d/dto/Kbuild"
  run_logged "compile devicetable-offsets.s" make -C "$hdrdir" M="$d/dto" ARCH="$KARCH" \
    CROSS_COMPILE="$cross" devicetable-offsets.s
  {
    echo '#ifndef __DEVICETABLE_OFFSETS_H__'
    echo '#define __DEVICETABLE_OFFSETS_H__'
    # the sed-offsets expression of the kernel's Kbuild.include
    sed -ne 's:^[[:space:]]*\.ascii[[:space:]]*"\(.*\)".*:\1:; /^->/{s:->#\(.*\):/* \1 */:; s:^->\([^ ]*\) [\$#]*\([^ ]*\) \(.*\):#define \1 \2 /* \3 */:; s:->::; p;}' \
      "$d/dto/devicetable-offsets.s"
    echo '#endif'
  } >"$M/devicetable-offsets.h"
  grep -q '^#define SIZE_of_device_id ' "$M/devicetable-offsets.h" || die "could not generate devicetable-offsets.h"
  run_logged "compile modpost" gcc -O2 -o "$d/modpost" "$M/modpost.c" "$M/file2alias.c" "$M/sumversion.c"
  cp "$d/modpost" "$hdrdir/scripts/mod/modpost"
}

# decompress_ko SRC DST
decompress_ko() {
  case $1 in
    *.ko) cp "$1" "$2" ;;
    *.ko.xz) xz -dc "$1" >"$2" ;;
    *.ko.zst) zstd -qdc "$1" >"$2" ;;
    *.ko.gz) gzip -dc "$1" >"$2" ;;
    *) die "unknown module file type: $1" ;;
  esac
}

# make_pvh BZIMAGE OUT: decompress the bzImage payload (an ELF vmlinux with a PVH entry note).
make_pvh() {
  local k=$1 out=$2 ss po pl off
  [ "$(od -An -c -j514 -N4 "$k" | tr -d ' ')" = HdrS ] || return 1
  ss=$(od -An -tu1 -j497 -N1 "$k" | tr -d ' ')
  [ "$ss" = 0 ] && ss=4
  po=$(od -An -tu4 -j584 -N4 "$k" | tr -d ' ')
  pl=$(od -An -tu4 -j588 -N4 "$k" | tr -d ' ')
  off=$(((ss + 1) * 512 + po))
  local magic
  magic=$(od -An -tx1 -j"$off" -N6 "$k" | tr -d ' ')
  case $magic in
    fd377a585a00*) tail -c +$((off + 1)) "$k" | head -c "$pl" | xz -dc --single-stream >"$out" ;;
    28b52ffd*) tail -c +$((off + 1)) "$k" | head -c "$pl" | zstd -qdc >"$out" 2>/dev/null || true ;;
    1f8b*) tail -c +$((off + 1)) "$k" | head -c "$pl" | gzip -dc >"$out" 2>/dev/null || true ;;
    *) return 1 ;;
  esac
  [ "$(od -An -c -N4 "$out" | tr -d ' ')" = '177ELF' ]
}

# pvh_boots FILE: does QEMU boot it as far as the kernel's attempt to mount a root fs?
pvh_boots() {
  local f=$1 o
  o=$(timeout 120 qemu-system-x86_64 -M pc -accel tcg -m 256M -nographic -no-reboot \
    -kernel "$f" -append 'console=ttyS0 panic=-1' </dev/null 2>&1 || true)
  printf '%s\n' "$o" >>"$LOG"
  # Here-strings, not pipes: grep -q quits at its match, and a writer killed by SIGPIPE
  # fails the pipeline under pipefail.
  grep -q "Linux version $REL" <<<"$o" &&
    grep -q 'Kernel panic - not syncing: VFS: Unable to mount root fs' <<<"$o"
}

build_arch() {
  local W=$KDIR/build/$A root new e
  rm -rf "$W"
  mkdir -p "$W"
  root=$W/root
  fetch_debs

  log "extracting ${PKGS_NAMES[0]} ..."
  run_logged "extract image" dpkg-deb -x "$(deb_of "${PKGS_NAMES[0]}")" "$root"
  [ -f "$root/boot/vmlinuz-$REL" ] || die "image deb has no boot/vmlinuz-$REL"
  [ -f "$root/boot/config-$REL" ] || die "image deb has no boot/config-$REL"
  [ -d "$root/lib/modules/$REL" ] || die "image deb has no lib/modules/$REL"

  BUILT_MODULES=()
  if [ "$NEED_BUILD" = 1 ]; then
    local hpk
    for hpk in "${PKGS_NAMES[@]:1:3}"; do
      log "extracting $hpk ..."
      run_logged "extract $hpk" dpkg-deb -x "$(deb_of "$hpk")" "$root"
    done
    log "extracting drivers/mtd from ${PKGS_NAMES[4]} ..."
    mkdir -p "$W/src"
    run_logged "extract source tarball" sh -c 'dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "./usr/src/linux-source-*.tar.*"' \
      sh "$(deb_of "${PKGS_NAMES[4]}")" "$W"
    local tarball
    tarball=$(ls "$W"/usr/src/linux-source-*.tar.* | head -n1)
    run_logged "extract drivers/mtd" tar -xf "$tarball" -C "$W/src" --strip-components=1 --wildcards \
      '*/drivers/mtd/*' '*/scripts/mod/*' '*/include/linux/license.h' '*/include/linux/mod_devicetable.h'
    rm -f "$tarball"
    build_mtd_modules "$W" "$root"
    if [ ${#BUILT_MODULES[@]} -gt 0 ]; then
      mkdir -p "$root/lib/modules/$REL/updates/ovl"
      cp "$W"/mtd/*.ko "$root/lib/modules/$REL/updates/ovl/"
    fi
  fi

  log "computing module dependencies for $REL ..."
  mkdir -p "$W/empty-conf"
  run_logged "depmod" depmod -C "$W/empty-conf" -b "$root" "$REL"

  new=$KDIR/.$A.new
  rm -rf "$new"
  TMP_PATHS+=("$new")
  mkdir -p "$new/modules"
  local m line path name seen=" " order=() builtin=() optional=()
  for m in $WANT_MODULES; do
    local deps
    deps=$(modprobe -C "$W/empty-conf" -d "$root" -S "$REL" --show-depends "$m" 2>>"$LOG") ||
      die "$A: module '$m' is neither a module nor built into $REL"
    while read -r line; do
      set -- $line
      case ${1:-} in
        insmod)
          path=$2
          name=$(basename "$path")
          name=${name%%.ko*}
          name=${name//-/_}
          case $seen in *" $name "*) continue ;; esac
          seen="$seen$name "
          decompress_ko "$path" "$new/modules/$name.ko"
          case " $OPTIONAL_MODULES " in
            *" $name "*) optional+=("$name") ;;
            *) order+=("$name") ;;
          esac
          ;;
        builtin) builtin+=("$2") ;;
      esac
    done <<<"$deps"
  done
  printf '%s\n' "${order[@]}" >"$new/modules.order"
  [ ${#optional[@]} = 0 ] || log "$A: in modules/ but not in modules.order (optional): ${optional[*]}"
  [ ${#builtin[@]} = 0 ] || log "$A: built into the kernel (no module needed): $(printf '%s\n' "${builtin[@]}" | sort -u | paste -sd' ')"

  # Every module must be for exactly this kernel.
  local vm
  for m in "${order[@]}" ${optional[@]+"${optional[@]}"}; do
    vm=$(modinfo -F vermagic "$new/modules/$m.ko" | cut -d' ' -f1)
    [ "$vm" = "$REL" ] || die "$m.ko has vermagic '$vm', expected '$REL'"
  done

  cp "$root/boot/vmlinuz-$REL" "$new/vmlinuz"
  cp "$root/boot/config-$REL" "$new/config"
  printf '%s\n' "$REL" >"$new/release"

  if [ "$A" = amd64 ]; then
    ensure_pkgs qemu-system-x86
    log "extracting the PVH ELF from the bzImage and test-booting it ..."
    if make_pvh "$new/vmlinuz" "$new/vmlinux-pvh" && pvh_boots "$new/vmlinux-pvh"; then
      log "amd64: vmlinux-pvh boots"
    else
      warn "amd64: the PVH ELF could not be produced or did not boot; only vmlinuz is provided"
      rm -f "$new/vmlinux-pvh"
    fi
  fi

  printf '%s\n' "${DEB_FILES[@]}" >"$new/.debs"
  printf '%s\n' "$STAMP" >"$new/.stamp"
  rm -rf "$KDIR/.$A.old"
  [ ! -e "$OUT" ] || mv "$OUT" "$KDIR/.$A.old"
  mv "$new" "$OUT"
  rm -rf "$KDIR/.$A.old"
  if [ "${OVL_KERNEL_KEEP_BUILD:-0}" != 1 ]; then
    rm -rf "$W"
    rmdir "$KDIR/build" 2>/dev/null || true
  fi
  log "$A: ready: $OUT ($REL, ${#order[@]} modules: ${order[*]})"
}

outputs_ok() { # outputs_ok DIR
  local d=$1 m
  [ -s "$d/vmlinuz" ] && [ -s "$d/release" ] && [ -s "$d/config" ] && [ -f "$d/modules.order" ] || return 1
  while read -r m; do [ -f "$d/modules/$m.ko" ] || return 1; done <"$d/modules.order"
}

prepare_arch() {
  set_arch "$1"
  if [ "${OVL_KERNEL_OFFLINE:-0}" = 1 ]; then
    outputs_ok "$OUT" || die "$A: OVL_KERNEL_OFFLINE=1 but $OUT is incomplete"
    log "$A: offline, using $(cat "$OUT/release")"
    return 0
  fi
  # Resolve in a subshell so that a failure (e.g. no network) can fall back to existing output.
  local rc=0
  trap - ERR
  set +e
  (
    set -e
    trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR
    if [ "$CTX" = sys ]; then ensure_foreign_arch "$A"; else setup_private_apt "$A"; fi
    resolve
    if [ "$CTX" = priv ]; then
      # Tell when the private indexes lag behind the host's (e.g. a security index failed).
      local newest
      newest=$(actx sys apt-cache policy "linux-source-$(printf '%s' "$VER" | sed -E 's/^([0-9]+\.[0-9]+).*/\1/')" 2>/dev/null |
        sed -n 's/^  Candidate: //p' | grep -vx '(none)' || true)
      if [ -n "$newest" ] && dpkg --compare-versions "$VER" lt "$newest"; then
        warn "$A: using $VER, older than $newest (the host's newest linux-source): the $A indexes that would carry it are not available"
        [ "$PRIV_UPDATED" = 1 ] || [ ! -s "$PRIV_DIR/failed-indexes" ] ||
          while IFS= read -r l; do warn "$A: failed index: $l"; done <"$PRIV_DIR/failed-indexes"
      fi
    fi
    PKGS_NAMES=()
    for e in "${PKGS[@]}"; do
      IFS='|' read -r _ n _ _ <<<"$e"
      PKGS_NAMES+=("$n")
    done
    [ "$NEED_BUILD" = 1 ] && KBUILD_PKG=${PKGS_NAMES[3]}
    STAMP=$(printf 'recipe=%s\narch=%s\nrelease=%s\nversion=%s\nmodules=%s\nbuild=%s\n' \
      "$RECIPE" "$A" "$REL" "$VER" "$WANT_MODULES / $OPTIONAL_MODULES" "$(printf '%s ' "${MTD_BUILD_SPECS[@]}")"
      printf 'package=%s\n' "${PKGS[@]}")
    if [ "$FORCE" = 0 ] && [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$STAMP" ] && outputs_ok "$OUT"; then
      log "$A: $REL ($VER) is up to date in $OUT"
      exit 0
    fi
    if [ -f "$OUT/release" ] && [ "$(cat "$OUT/release")" = "$REL" ]; then
      log "$A: rebuilding $REL ($VER): package version, module list or recipe changed"
    elif [ -f "$OUT/release" ]; then
      log "$A: updating $(cat "$OUT/release") -> $REL ($VER)"
    else
      log "$A: preparing $REL ($VER)"
    fi
    build_arch
  )
  rc=$?
  set -e
  trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR
  if [ "$rc" != 0 ]; then
    if [ "$rc" = "$EX_UNAVAILABLE" ] && outputs_ok "$OUT"; then
      warn "$A: the newest kernel packages are unavailable (see above); keeping the existing $(cat "$OUT/release") in $OUT"
      return 0
    fi
    die "$A: failed (see messages above; log: $LOG)"
  fi
}

prune_debs() { # drop downloaded debs no prepared arch refers to any more
  local keep f
  [ -d "$KDIR/debs" ] || return 0
  keep=$(cat "$KDIR"/*/.debs 2>/dev/null | sort -u || true)
  for f in "$KDIR"/debs/*.deb; do
    [ -e "$f" ] || continue
    grep -qxF "$(basename "$f")" <<<"$keep" || {
      log "removing stale $(basename "$f")"
      rm -f "$f"
    }
  done
}

# ---------------------------------------------------------------------------------------------

main() {
  local arches=() a
  while [ $# -gt 0 ]; do
    case $1 in
      -f | --force) FORCE=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      all) arches+=(arm64 amd64 armhf) ;;
      arm64 | amd64 | armhf) arches+=("$1") ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
  done
  [ ${#arches[@]} -gt 0 ] || arches=(arm64 amd64)
  case $JOBS in '' | *[!0-9]*) die "OVL_KERNEL_JOBS must be a number" ;; esac

  mkdir -p "$KDIR"
  exec 9>"$KDIR/.lock"
  if ! flock -n 9; then
    log "another kernel.sh is running on $KDIR; waiting ..."
    flock 9
  fi
  LOG=$KDIR/kernel.log
  : >"$LOG"

  if [ "${OVL_KERNEL_OFFLINE:-0}" != 1 ]; then
    ensure_pkgs kmod xz-utils zstd
  fi
  for a in "${arches[@]}"; do prepare_arch "$a"; done
  [ "${OVL_KERNEL_OFFLINE:-0}" = 1 ] || prune_debs
  log "done: $KDIR"
}

main "$@"
