#!/usr/bin/env bash
# Builds retrybudget-otelcol (our minimal OpenTelemetry Collector distribution) from this directory's
# pinned go.mod/go.sum and prints the binary's path on stdout (progress goes to stderr).
#
#   collector-config/distribution/build.sh            # -> ~/.cache/retrybudget/otelcol-<hash>/retrybudget-otelcol
#
# The binary is cached outside the clone, keyed by the hash of go.mod, go.sum and the Go sources, so a
# second run (or CI on the same machine) is instant; Go's own build and module caches make a rebuild after
# a source change quick too. A fresh machine downloads the modules and builds from scratch (see README,
# "Operate it", for the measured times). Set RETRYBUDGET_CACHE to move the cache.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v go >/dev/null || { echo "build.sh: 'go' not found: install Go >= 1.25 (https://go.dev/dl/)" >&2; exit 1; }
cache="${RETRYBUDGET_CACHE:-$HOME/.cache/retrybudget}"
key="$(cd "$here" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)"
out="$cache/otelcol-$key/retrybudget-otelcol"
if [[ ! -x "$out" ]]; then
  mkdir -p "$(dirname "$out")"
  echo "build.sh: building retrybudget-otelcol into $out (first build on a machine: many minutes)" >&2
  start=$SECONDS
  (cd "$here" && nice go build -trimpath -ldflags "-s -w" -o "$out.tmp.$$" .)
  mv -f "$out.tmp.$$" "$out"
  echo "build.sh: built in $((SECONDS - start)) s" >&2
fi
echo "$out"
