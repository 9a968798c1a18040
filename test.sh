#!/usr/bin/env bash
# The whole test suite: formatting, lints, the man pages and completions, unit tests, the
# privileged tests on real mounts, and the emulated boards under QEMU. Installs what it needs
# first (apt packages, rust targets, Debian kernels, busybox). Run as root.
set -euo pipefail
cd "$(dirname "$0")"
OVL_STEP=test
. scripts/lib.sh
. qemu-arm/boards.sh
. scripts/device.sh
need_root
ensure_host_tools

say "cargo fmt --check"
cargo fmt --check
say "cargo clippy"
cargo clippy --quiet --all-targets -- -D warnings
say "cargo clippy --no-default-features (the device build's variant: help rendered at build time)"
blob=$(mktemp)
device_help_blob "$PWD" "$blob"
OVL_HELP_BLOB=$blob cargo clippy --quiet --no-default-features --all-targets -- -D warnings
rm -f "$blob"
say "cargo clippy and the timing unit test with --features timing (bench/boards.sh --steps)"
cargo clippy --quiet --features timing --all-targets -- -D warnings
cargo test --quiet --features timing --lib timing:: 2>&1
say "man pages and shell completions (scripts/check-docs.sh)"
scripts/check-docs.sh
say "building the emulated boards: $BOARDS"
# shellcheck disable=SC2086
qemu-arm/build.sh $BOARDS
say "unit tests, privileged tests on real mounts, emulated boards (cargo test)"
# Two at a time: each board scenario runs a QEMU, and there are two cores.
RUST_TEST_THREADS=2 cargo test --quiet --lib --bins --tests 2>&1
say "fuzz targets, briefly (bench/fuzz.sh 5): a parser that crashes on what it found before fails here"
bench/fuzz.sh 5
