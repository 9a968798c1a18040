#!/usr/bin/env bash
# Board benchmark: builds the boards if needed, then boots each several times with ovl and
# with the busybox-shell baseline and prints medians and the ovl/baseline ratio.
# Usage: bench/boards.sh [--boots N] [--no-reset] [--against REV] [--steps] [BOARD...]
#   --against REV  also boots REV's ovl (git revision) in a copy of each board's initramfs,
#                  built as REV's own qemu-arm/build.sh builds it, in a worktree of its own
#                  under $CACHE/against/, and prints the ratio new/old.
#   --steps        also boots this tree's ovl built with the cargo feature `timing`
#                  (src/timing.rs) and prints the median of every sub-step it timed.
set -euo pipefail
cd "$(dirname "$0")/.."
OVL_STEP=bench
. scripts/lib.sh
need_root
CACHE=${OVL_CACHE:-$PWD/.cache}
boards=() against="" steps="" args=()
while [ $# -gt 0 ]; do
    case $1 in
    --against) against=${2:?--against needs a revision}; shift 2 ;;
    --against=*) against=${1#--against=}; shift ;;
    --steps) steps=1; args+=("$1"); shift ;;
    qemu-*) boards+=("$1"); args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
    esac
done
[ ${#boards[@]} -gt 0 ] || boards=(qemu-aarch64-nor qemu-aarch64-nor-ubi qemu-x86_64-disk)
qemu-arm/build.sh "${boards[@]}"

# against_ovl REV BOARD: REV's ovl for BOARD's target, copied to $CACHE/against/REV/BOARD.ovl.
# The build is the part of REV's own qemu-arm/build.sh from its "ovl for" line to where it
# names the binary (ovl=...), run after the scripts that build.sh sources (REV's lib.sh,
# boards.sh, device.sh...): however that revision builds (toolchain, flags, target
# directory), it is built that way, in its worktree.
against_ovl() {
    local rev=$1 board=$2 dir=$CACHE/against/$1 wt=$CACHE/against/$1/src snippet sources
    mkdir -p "$dir"
    if [ "$(git -C "$wt" rev-parse HEAD 2>/dev/null)" != "$(git rev-parse "$rev^{commit}")" ]; then
        rm -rf "$wt"
        git worktree prune
        git worktree add --quiet --detach "$wt" "$rev" >&2 || die "git worktree add $rev failed"
    fi
    snippet=$(sed -n '/ovl for \$RUST_TARGET/,/^[[:space:]]*\(local \)\?ovl=/p' "$wt/qemu-arm/build.sh")
    grep -q 'ovl=' <<<"$snippet" || die "$rev: no ovl build found in its qemu-arm/build.sh"
    sources=$(grep -E '^\. "\$(REPO|HERE)/[^"]+"$' "$wt/qemu-arm/build.sh")
    (
        unset CARGO_TARGET_DIR
        # Tools the build fetches (a zig, say) are shared with this tree's cache.
        export OVL_CACHE=$CACHE
        REPO=$wt HERE=$wt/qemu-arm OVL_STEP="bench $rev"
        eval "$sources"
        board_vars "$board" >/dev/null || die "$rev does not know board $board"
        build() { eval "$snippet"; cp "$ovl" "$dir/$board.ovl"; }
        build
    ) >&2 || die "$rev: building ovl for $board failed"
    file -b "$dir/$board.ovl" | grep -Eq 'statically linked|static-pie linked' ||
        die "$rev: $dir/$board.ovl is not a static binary"
}
if [ -n "$against" ]; then
    rev=$(git rev-parse --short "$against^{commit}") || die "--against $against: no such revision"
    for b in "${boards[@]}"; do
        say "[$b] ovl of $rev"
        against_ovl "$rev" "$b"
    done
    args+=(--against "$rev")
fi
# steps_ovl BOARD: this tree's device build with timings, as $CACHE/steps/BOARD.ovl.
steps_ovl() {
    mkdir -p "$CACHE/steps"
    (
        . scripts/device.sh
        . qemu-arm/boards.sh
        board_vars "$1" >/dev/null || die "no board $1"
        OVL_DEVICE_FEATURES=timing device_build "$PWD" "$RUST_TARGET"
        cp "$DEVICE_BIN" "$CACHE/steps/$1.ovl"
    ) >&2 || die "building ovl with timings for $1 failed"
}
if [ -n "$steps" ]; then
    for b in "${boards[@]}"; do
        say "[$b] ovl with sub-step timings (--features timing)"
        steps_ovl "$b"
    done
fi
exec python3 bench/boards.py "${args[@]}"
