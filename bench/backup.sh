#!/usr/bin/env bash
# bench/backup.sh [RUNS]: backup and restore time and archive size on the host, for a typical
# configuration (40 files) and a large one (3000 files), next to GNU `tar czf` of the same
# files in the same run (median of RUNS, default 5); then the code each crate the backup
# brought in (tar, flate2/miniz_oxide, glob) occupies in the aarch64 binary (a stable build;
# bench/size.sh measures the device build).
# Prints figures only; nothing passes or fails on time.
set -euo pipefail
cd "$(dirname "$0")/.."
OVL_STEP=bench
. scripts/lib.sh
runs=${1:-5}
case $runs in '' | *[!0-9]*) die "usage: bench/backup.sh [RUNS]" ;; esac

say "building the release binary (x86_64-musl)"
cargo build --quiet --release --target x86_64-unknown-linux-musl --bin ovl
bin=$PWD/target/x86_64-unknown-linux-musl/release/ovl
work=$(mktemp -d /tmp/ovl-bench-backup.XXXXXX)
trap 'rm -rf "$work"' EXIT

# make_tree DIR FILES: a device's tree with FILES kept files under etc/config and etc/app.
make_tree() {
    local d=$1 n=$2 i
    mkdir -p "$d/etc/config" "$d/etc/app" "$d/rom/etc"
    printf '/etc/config/\n/etc/app/\n' > "$d/etc/sysupgrade.conf"
    for i in $(seq "$n"); do
        # Config-like text: repetitive lines, about 1 KiB.
        awk -v i="$i" 'BEGIN { for (l = 0; l < 24; l++) printf "option key%d_%d \"value %d\"\n", l, i, l * i }' \
            > "$d/etc/$([ $((i % 2)) = 0 ] && echo config || echo app)/file$i"
    done
}

python_median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.1f}")' "$@"; }
ms() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N); echo $(((t1 - t0) / 1000))e-3; }

for spec in typical:40 large:3000; do
    name=${spec%%:*} n=${spec#*:}
    tree=$work/$name
    make_tree "$tree" "$n"
    b=() t=() r=()
    for _ in $(seq "$runs"); do
        b+=("$(ms "$bin" backup --root "$tree" -o "$work/$name.tar.gz")")
        t+=("$(ms tar -C "$tree" -czf "$work/$name.gnu.tar.gz" etc/config etc/app etc/sysupgrade.conf)")
        rm -rf "$work/target" && mkdir -p "$work/target/etc" && cp "$tree/etc/sysupgrade.conf" "$work/target/etc/"
        r+=("$(ms "$bin" restore --root "$work/target" "$work/$name.tar.gz")")
    done
    # The restore must have put every file back.
    [ "$(find "$work/target/etc/config" "$work/target/etc/app" -type f | wc -l)" = "$n" ] ||
        die "$name: the restore did not put back all $n files"
    printf '%-8s %5d files: backup %7s ms (%7d bytes); tar czf %7s ms (%7d bytes); restore %7s ms\n' \
        "$name" "$n" "$(python_median "${b[@]}")" "$(stat -c %s "$work/$name.tar.gz")" \
        "$(python_median "${t[@]}")" "$(stat -c %s "$work/$name.gnu.tar.gz")" "$(python_median "${r[@]}")"
done
echo "(median of $runs runs each; the restore checks every member, stages, and syncs before it commits)"

say "code per crate in the aarch64-musl binary (symbol sizes of an unstripped LTO build)"
CARGO_PROFILE_RELEASE_STRIP=false cargo build --quiet --release --target aarch64-unknown-linux-musl \
    --target-dir target/bench-size --bin ovl
elf=target/bench-size/aarch64-unknown-linux-musl/release/ovl
nm -S --size-sort -C "$elf" | python3 -c '
import re, sys, collections
sizes = collections.Counter()
for line in sys.stdin:
    parts = line.split(None, 3)
    if len(parts) < 4:
        continue
    size, name = int(parts[1], 16), parts[3]
    m = re.match(r"[<&\s]*(?:dyn |mut )?([a-z_][a-z0-9_]*)::", name)
    sizes[m.group(1) if m else "(other)"] += size
for crate in ["tar", "flate2", "miniz_oxide", "glob", "ovl"]:
    print(f"  {crate:12s} {sizes[crate] / 1024:7.1f} KiB")
print("  (LTO inlines across crates: a crate'"'"'s code inlined into ovl counts as ovl'"'"'s;")
print("  the device build'"'"'s stripped size is bench/size.sh'"'"'s)")
'
