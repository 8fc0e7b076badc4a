#!/usr/bin/env bash
# The whole scored test suite, from a bare Debian 12 machine: installs what the tests need
# (idempotent, quiet when already there), then checks formatting and lints, then runs every test.
# Heavy benchmarks are not part of this: see bench/ and `scripts/bench.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "dependencies"
./scripts/install-deps.sh

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The simulator, the tools and a daemon over sim+file:// build without libvirt (no libvirt-dev):
# that build must stay clean too.
step "build and lints without default features (no libvirt, testbed, plot)"
cargo build --workspace --no-default-features --locked
cargo clippy --workspace --all-targets --no-default-features --locked -- -D warnings

step "tests"
# --no-fail-fast: one red test binary must not hide the others in a CI log. A CI log is often
# read from its end: on failure, every failed test's panic message is repeated there, briefly.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"; then
    step "failures (each test's panic, first lines)"
    grep -A3 -E "^thread '.*' \([0-9]+\) panicked at|^thread '.*' panicked at" "$log" | cut -c1-400 | head -200 || true
    exit 101
fi
