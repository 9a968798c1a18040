#!/usr/bin/env bash
# bench/powercut.sh N [SEED]: the power-cut soak. Runs N seeded cuts (QEMU killed at a random
# point) per scenario on the NOR board, during a mounted reset, a failsafe reset, JFFS2's
# background erase after a reset (a writer running), a first boot, sysupgrade-keep, the
# restore of a kept configuration at boot, the ROM write of sysupgrade and, on the UBI
# board, the staging of a new ROM and its copy into place, and prints per scenario how many
# next boots came up healthy and how many showed a mixture of old and new state. SEED repeats a run (each cut uses SEED, SEED+1, ...).
set -uo pipefail
cd "$(dirname "$0")/.."
OVL_STEP=powercut
. scripts/lib.sh
need_root
n=${1:-10}
case $n in '' | *[!0-9]*) die "usage: bench/powercut.sh N [SEED]" ;; esac
qemu-arm/build.sh qemu-aarch64-nor qemu-aarch64-nor-ubi || die "building the board failed"
log=$(mktemp)
say "$n cuts per scenario; the console logs are under target/tmp/boards/nor-*-cut"
env OVL_CUTS="$n" ${2:+OVL_SEED="$2"} RUST_TEST_THREADS=2 \
    cargo test --quiet --test boards power_cuts_during -- --nocapture >"$log" 2>&1
code=$?
grep -Eo '(POWERCUT|mounted reset cut|erase cut|first boot cut|background erase cut|keep cut|restore cut|flash cut|stage cut|copy cut).*' "$log"
grep -A3 'panicked' "$log" | head -40
echo
grep '^POWERCUT' "$log" | sed 's/^POWERCUT /summary: /'
rm -f "$log"
exit $code
