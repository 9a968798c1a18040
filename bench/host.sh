#!/usr/bin/env bash
# Host benchmark: preinit on real mounts (loop devices, squashfs, ext4, overlayfs) in private
# mount namespaces, with the release static binary. Prints figures only; nothing passes or
# fails on time. Usage: bench/host.sh [BOOTS]   (default 9 later boots after the first)
set -euo pipefail
cd "$(dirname "$0")/.."
OVL_STEP=bench
. scripts/lib.sh
need_root
ensure_host_tools
boots=${1:-9}

say "building release binaries (x86_64-musl, aarch64-musl)"
cargo build --quiet --release --target x86_64-unknown-linux-musl --target aarch64-unknown-linux-musl
bin=target/x86_64-unknown-linux-musl/release/ovl

work=$(mktemp -d /tmp/ovl-bench.XXXXXX)
loops=()
cleanup() {
    for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

tree=$work/rom
mkdir -p "$tree"/{bin,sbin,etc,proc,sys,dev,run,tmp,rom,overlay,mnt}
cp "$(command -v busybox)" "$tree/bin/busybox"
for a in sh cat; do ln -s busybox "$tree/bin/$a"; done
cp "$bin" "$tree/sbin/ovlctl"
printf '#!/bin/sh\ncat /run/ovl/state.json\n' > "$tree/sbin/init"
chmod 755 "$tree/sbin/init"
# The ROM ships mkfs.ext4 with its libraries, as a board's does: preinit runs nothing from
# outside its target.
for f in /usr/sbin/mkfs.ext4 $(ldd /usr/sbin/mkfs.ext4 | grep -o '/[^ ]*'); do
    mkdir -p "$tree$(dirname "$f")"
    cp -L "$f" "$tree$f"
done
mksquashfs "$tree" "$work/rom.sqfs" -noappend -quiet -comp xz -all-root >/dev/null
head -c $((32 << 20)) /dev/zero | tr '\0' '\377' > "$work/data.img"
rom=$(losetup --find --show "$work/rom.sqfs"); loops+=("$rom")
data=$(losetup --find --show "$work/data.img"); loops+=("$data")
echo "ovl.rom=$rom ovl.data=$data" > "$work/cmdline"
mkdir -p "$work/t"

boot() {
    unshare --mount --propagation private -- sh -c \
        "mount -t tmpfs -o size=16m bench $work/t && exec $PWD/$bin preinit --target $work/t --cmdline-file $work/cmdline" \
        2>/dev/null | tail -n 1
}

boot > "$work/first.json"
: > "$work/later.json"
for _ in $(seq "$boots"); do boot >> "$work/later.json"; done

python3 - "$work" "$boots" <<'PY'
import json, os, statistics, sys
work, n = sys.argv[1], int(sys.argv[2])
first = json.load(open(f"{work}/first.json"))
later = [json.loads(l) for l in open(f"{work}/later.json") if l.strip()]
assert first["mode"] == "persistent" and all(s["mode"] == "persistent" for s in later), "a boot fell back"
ms = lambda us: f"{us / 1000:.1f} ms"
print("host preinit (x86_64, static musl, release), start to exec of init:")
print(f"  first boot (mkfs.ext4 of 32 MiB): {ms(first['total_us'])}")
print(f"  later boots, median of {len(later)}:  {ms(statistics.median(s['total_us'] for s in later))}")
steps = {}
for s in later:
    for t in s["steps"]:
        steps.setdefault(t["step"], []).append(t["us"])
print("  per step, median:  " + ", ".join(f"{k} {ms(statistics.median(v))}" for k, v in steps.items()))
print(f"  peak RSS of preinit: {max(s['peak_rss_kib'] for s in later + [first])} KiB")
PY
echo "static binary size (stripped, opt-level z, LTO):"
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
    printf '  %-28s %8d bytes\n' "$t" "$(stat -c %s target/$t/release/ovl)"
done
