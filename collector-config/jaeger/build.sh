#!/usr/bin/env bash
# Builds Jaeger v2 from its Go module (the version pinned in this directory's go.mod as a `tool`) and prints
# the binary's path on stdout (progress goes to stderr). Cached like ../distribution/build.sh: outside the
# clone, keyed by the hash of go.mod and go.sum; set RETRYBUDGET_CACHE to move the cache.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v go >/dev/null || { echo "build.sh: 'go' not found: install Go >= 1.25 (https://go.dev/dl/)" >&2; exit 1; }
cache="${RETRYBUDGET_CACHE:-$HOME/.cache/retrybudget}"
key="$(cd "$here" && cat go.mod go.sum | sha256sum | cut -c1-16)"
out="$cache/jaeger-$key/jaeger"
if [[ ! -x "$out" ]]; then
  mkdir -p "$(dirname "$out")"
  echo "build.sh: building jaeger into $out (first build on a machine: many minutes)" >&2
  start=$SECONDS
  (cd "$here" && nice go build -trimpath -ldflags "-s -w" -o "$out.tmp.$$" github.com/jaegertracing/jaeger/cmd/jaeger)
  mv -f "$out.tmp.$$" "$out"
  echo "build.sh: built in $((SECONDS - start)) s" >&2
fi
echo "$out"
