#!/usr/bin/env bash
# Mutation testing with cargo-mutants (issue 13): how many deliberately broken variants of a crate's code do its
# tests catch? Not part of CI (it rebuilds and re-tests the crate once per mutant). The last figures, the exact
# commands and the equivalent mutants are in CONTRIBUTING.md ("Mutation testing").
#
#   scripts/mutants.sh                         # crates/policy, every mutant (~20 min with MUTANTS_JOBS=2)
#   scripts/mutants.sh policy --file crates/policy/src/budget.rs   # extra arguments go to cargo-mutants
#   scripts/mutants.sh policy --iterate        # re-test only what the last run did not catch
#   scripts/mutants.sh client --shard 0/4 --sharding round-robin   # crates/client is slow: its tests start
#                                              # real servers, so sample it
#
# Needs `cargo install cargo-mutants --locked` (27.1.0 was used). Results: target/mutants-<crate>/mutants.out/
# {caught,missed,unviable,timeout}.txt and outcomes.json; the summary line is printed at the end.
# MUTANTS_JOBS (default 1) copies of the tree are built and tested side by side; cargo-mutants deletes its temp
# copies when it ends. Doc tests are skipped (they build one binary each); property tests run PROPTEST_CASES
# cases (default 128 here, 512 in CI) to keep each run short; debug info is off (faster links, same code). The
# test timeout is 5× the unmutated run, at least MUTANTS_MIN_TIMEOUT seconds (default 60: a loaded machine).
set -euo pipefail
cd "$(dirname "$0")/.."
crate="${1:-policy}"
shift || true
command -v cargo-mutants >/dev/null || {
  echo "cargo-mutants is missing: cargo install cargo-mutants --locked" >&2
  exit 1
}
export PROPTEST_CASES="${PROPTEST_CASES:-128}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-0}"
jobs=()
[ -n "${MUTANTS_JOBS:-}" ] && jobs=(--jobs "$MUTANTS_JOBS") # cargo-mutants refuses --jobs with --in-place
exec nice -n 10 cargo mutants \
  --package "retrybudget-$crate" \
  --output "target/mutants-$crate" \
  "${jobs[@]}" \
  --minimum-test-timeout "${MUTANTS_MIN_TIMEOUT:-60}" \
  --cargo-test-arg=--lib --cargo-test-arg=--tests \
  "$@"
