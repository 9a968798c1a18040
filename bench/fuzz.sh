#!/usr/bin/env bash
# bench/fuzz.sh SECONDS [TARGET...]: runs every fuzz target in fuzz/ (or the ones named) for
# SECONDS each, one after another with one worker, and prints executions and crashes per
# target and in total. Exits non-zero if a target crashed, naming the input that did it.
# Installs what it needs: the nightly toolchain and cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
OVL_STEP=fuzz
. scripts/lib.sh
secs=${1:?usage: bench/fuzz.sh SECONDS [TARGET...]}
shift

ensure_nightly
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet || die "cargo install cargo-fuzz failed"
fi

cd fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo "+$NIGHTLY" fuzz list)
say "building ${#targets[@]} targets"
cargo "+$NIGHTLY" fuzz build --release >/dev/null 2>&1 || cargo "+$NIGHTLY" fuzz build --release

work=$(mktemp -d /tmp/ovl-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
total=0
crashed=0
printf '%-12s %14s %8s\n' target executions crashes
for t in "${targets[@]}"; do
    corpus=$work/corpus/$t
    mkdir -p "$corpus" "artifacts/$t"
    [ -d "seeds/$t" ] && cp -r "seeds/$t/." "$corpus/"
    log=$work/$t.log
    rc=0
    cargo "+$NIGHTLY" fuzz run --release "$t" "$corpus" -- \
        -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    execs=${execs:-0}
    crashes=0
    if [ "$rc" -ne 0 ]; then
        crashes=1
        crashed=1
        art=$(grep -o "artifacts/$t/[^ ]*" "$log" | head -1)
        say "$t crashed: ${art:-see below}"
        tail -30 "$log" >&2
    fi
    total=$((total + execs))
    printf '%-12s %14d %8d\n' "$t" "$execs" "$crashes"
done
printf '%-12s %14d %8d\n' total "$total" "$crashed"
exit "$crashed"
