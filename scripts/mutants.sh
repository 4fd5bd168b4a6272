#!/usr/bin/env bash
# Mutation testing with cargo-mutants (issue 13): how many deliberately broken variants of a crate's code do its
# tests catch? Not part of CI (it rebuilds and re-tests the crate once per mutant: an hour or more on 2 cores).
#
#   scripts/mutants.sh                         # crates/policy, every mutant
#   scripts/mutants.sh policy --file crates/policy/src/budget.rs   # extra arguments go to cargo-mutants
#   scripts/mutants.sh client                  # crates/client (slow: its tests start real servers)
#
# Needs `cargo install cargo-mutants`. Results: target/mutants-<crate>/mutants.out/{caught,missed,unviable,
# timeout}.txt and outcomes.json; the summary line is printed at the end. Doc tests are skipped (they build one
# binary each); property tests run PROPTEST_CASES cases (default 128 here, 512 in CI) to keep each run short.
set -euo pipefail
cd "$(dirname "$0")/.."
crate="${1:-policy}"
shift || true
command -v cargo-mutants >/dev/null || { echo "cargo-mutants is missing: cargo install cargo-mutants" >&2; exit 1; }
export PROPTEST_CASES="${PROPTEST_CASES:-128}"
exec nice -n 10 cargo mutants \
  --package "retrybudget-$crate" \
  --output "target/mutants-$crate" \
  --jobs 1 \
  --timeout 300 \
  --cargo-test-arg=--lib --cargo-test-arg=--tests \
  "$@"
