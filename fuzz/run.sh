#!/usr/bin/env bash
# Runs each cargo-fuzz target for a given time and prints one summary line per target.
#
#   fuzz/run.sh SECONDS [TARGET...]      (default: every target, one after the other)
#
# No nightly toolchain is needed: RUSTC_BOOTSTRAP=1 lets stable rustc take cargo-fuzz's -Z flags, and
# `--sanitizer none` skips ASan (the targets are safe Rust; libFuzzer's coverage guidance is what we use).
# Needs `cargo install cargo-fuzz` and a C++ compiler (libfuzzer-sys builds libFuzzer). Not part of CI.
# Seeds (committed, small) are in fuzz/seeds/<target>; what the fuzzer finds grows in fuzz/corpus/<target>
# (ignored by git); a crash is written to fuzz/artifacts/<target>/ and makes this script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
export RUSTC_BOOTSTRAP=1
mkdir -p logs
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t" "artifacts/$t"
  log="logs/$t.log"
  if nice -n 10 cargo fuzz run --sanitizer none "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 -max_len=65536 -timeout=10 -rss_limit_mb=2048 >"$log" 2>&1; then
    result=ok
  else
    result="FAILED (see $log and artifacts/$t/)"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
  echo "$t: ${secs}s, executions=${execs:-?}, ${cov:-cov: ?}, corpus=$(ls "corpus/$t" | wc -l) files, $result"
done
exit "$status"
