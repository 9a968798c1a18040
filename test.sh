#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, the privileged tests on real mounts.
# Installs what it needs first (apt packages, rust targets). Run as root.
set -euo pipefail
cd "$(dirname "$0")"
OVL_STEP=test
. scripts/lib.sh
need_root
ensure_host_tools

say "cargo fmt --check"
cargo fmt --check
say "cargo clippy"
cargo clippy --quiet --all-targets -- -D warnings
say "unit and privileged tests (cargo test)"
cargo test --quiet --lib --bins --tests 2>&1
