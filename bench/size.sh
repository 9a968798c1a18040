#!/usr/bin/env bash
# Binary size: the device build of ovl (scripts/device.sh) per target, stripped, and where the
# bytes go (crates and the largest functions, from the symbol table of an unstripped copy of
# the same build), so that a change that adds 50 KiB is seen. Figures only: nothing fails.
# Usage: bench/size.sh [--top N] [TARGET...]   (default: the three device targets; the
# breakdown is printed for the first one)
set -euo pipefail
cd "$(dirname "$0")/.."
OVL_STEP=size
. scripts/lib.sh
. scripts/device.sh
top=15
targets=()
while [ $# -gt 0 ]; do
    case $1 in
    --top) top=$2; shift ;;
    -*) die "unknown option $1" ;;
    *) targets+=("$1") ;;
    esac
    shift
done
[ ${#targets[@]} -gt 0 ] ||
    targets=(aarch64-unknown-linux-musl x86_64-unknown-linux-musl armv7-unknown-linux-musleabihf)
ensure_packages binutils:nm

printf '\nstripped static binaries (device build: nightly -Zbuild-std, panic=immediate-abort):\n'
for t in "${targets[@]}"; do
    device_build "$PWD" "$t"
    printf '  %-34s %8d bytes  %4d KiB\n' "$t" "$(stat -c %s "$DEVICE_BIN")" $(($(stat -c %s "$DEVICE_BIN") / 1024))
done
limit=$((512 * 1024))
first=${targets[0]}
DEVICE_TARGET_DIR=target/device-syms CARGO_PROFILE_RELEASE_STRIP=false device_build "$PWD" "$first"
syms=$DEVICE_BIN
say "where the bytes of $first go (symbol sizes of the same build, unstripped)"
size -A "$syms" | awk '$1 ~ /^\.(text|rodata|data|bss|data\.rel\.ro|tdata)$/ {printf "  section %-14s %8d bytes\n", $1, $2}'
nm -S --size-sort -C "$syms" | python3 -c '
import collections, re, sys
top = int(sys.argv[1])
crates, funcs = collections.Counter(), []
for line in sys.stdin:
    p = line.split(None, 3)
    if len(p) < 4:
        continue
    size, kind, name = int(p[1], 16), p[2], p[3].strip()
    if kind.lower() not in "tw":
        continue
    bare = re.sub(r"^(<|_<)+", "", name)
    # The first path names the crate: `<u128 as core::fmt::Display>::fmt` belongs to core.
    m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)::", bare)
    crates[m.group(1) if m else "(no crate: musl libc, outlined code)"] += size
    funcs.append((size, name))
print(f"  code by crate (total {sum(crates.values())} bytes):")
for k, v in crates.most_common(top):
    print(f"    {v:8d}  {k}")
print(f"  largest functions:")
for s, n in sorted(funcs, reverse=True)[:top]:
    print(f"    {s:8d}  {n[:110]}")
' "$top"
stripped=$(stat -c %s "$DEVICE_TARGET_DIR/$first/release/ovl")
if [ "$first" = aarch64-unknown-linux-musl ]; then
    if [ "$stripped" -le "$limit" ]; then
        printf '\n%s: %d bytes, %d below the 512 KiB goal\n' "$first" "$stripped" $((limit - stripped))
    else
        printf '\n%s: %d bytes, %d over the 512 KiB goal\n' "$first" "$stripped" $((stripped - limit))
    fi
fi
