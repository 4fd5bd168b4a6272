#!/usr/bin/env bash
# The one test command (README, CONTRIBUTING and .ci/run all call this through `make test`).
# It installs what the tests need when missing — Debian: prometheus (+ promtool), prometheus-alertmanager
# (amtool), chromium; pip: pytest, pyyaml, openai, rotel, websocket-client; npm (tests/node): openai; Go: our
# collector distribution and Jaeger from their pinned modules (collector-config/*/build.sh) — then runs, in
# order: formatting, clippy with warnings as errors, every Rust test in the workspace, and the Python and Node
# tests that drive real components (the openai SDKs through the proxy; Prometheus evaluating every
# dashboard and rule query against a running demo; the HTML incident report in headless Chromium; evidence
# file rotation under load).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n=== %s\n' "$*"; }

log "dependencies"
need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v amtool >/dev/null || need_apt+=(prometheus-alertmanager)
command -v kill >/dev/null || need_apt+=(procps)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
PY=python3
pip_install() {
  # A Debian-managed python refuses plain `pip install` (PEP 668); this machine's own python does not.
  $PY -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@" 2>/dev/null ||
    $PY -m pip install -q --disable-pip-version-check --root-user-action=ignore --break-system-packages "$@"
}
if ! $PY -c 'import pytest, yaml, openai, rotel' 2>/dev/null; then
  pip_install pytest pyyaml openai
  pip_install --pre rotel
fi
$PY -c 'import websocket' 2>/dev/null || pip_install websocket-client
ROTEL_AGENT="$($PY -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
export ROTEL_AGENT
promtool --version 2>&1 | head -1
echo "rotel-agent: $ROTEL_AGENT"

command -v node >/dev/null && command -v npm >/dev/null || { echo "missing Node.js/npm: needed for tests/node"; exit 1; }

# The Go builds of the real collector distribution and Jaeger start now, in the background (nice), so they
# overlap the Rust stages; their binaries are cached under ~/.cache/retrybudget keyed by go.mod/go.sum, so on the
# same machine this is instant after the first run. A fresh machine builds both from the Go module proxy.
command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "missing Go (>= 1.26): needed to build the collector and Jaeger"; exit 1; }
go version
GO_BUILD_LOG="$(mktemp)"
(
  set -e
  start=$SECONDS
  collector-config/distribution/build.sh > "$GO_BUILD_LOG.otelcol"
  echo "go: retrybudget-otelcol ready after $((SECONDS - start)) s"
  collector-config/jaeger/build.sh > "$GO_BUILD_LOG.jaeger"
  echo "go: jaeger ready after $((SECONDS - start)) s"
) > "$GO_BUILD_LOG" 2>&1 &
GO_BUILD_PID=$!

for component in rustfmt clippy; do
  cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 || { echo "missing the $component component of the Rust toolchain"; exit 1; }
done

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo doc --workspace --no-deps (rustdoc warnings are errors)"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps -q

log "cargo test --workspace"
cargo test --workspace

log "build the retrybudget binary for the whole-system tests"
cargo build -p retrybudget
RETRYBUDGET_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/retrybudget"
export RETRYBUDGET_BIN
"$RETRYBUDGET_BIN" --version

log "python: the official openai SDK through a running retrybudget proxy"
$PY -m pytest -q -p no:cacheprovider tests/sdk

log "python: callers retrying on top of the proxy (hand-written loop, openai SDK)"
$PY -m pytest -q -p no:cacheprovider tests/caller
log "python: security suite against a running proxy holding a key (SECURITY.md maps each test to its threat)"
$PY -m pytest -q -p no:cacheprovider tests/security

log "python: operations kit (rules, configs, dashboards, every PromQL query against a real Prometheus)"
$PY -m pytest -q -s -p no:cacheprovider tests/ops

log "python: report --html in headless Chromium (no request, no console error, figures = text report = demo), 1 GiB of garbage"
$PY -m pytest -q -s -p no:cacheprovider tests/report

log "python: evidence file rotation and reopen under load (tests/chain/test_evidence_rotation.py)"
$PY -m pytest -q -p no:cacheprovider tests/chain/test_evidence_rotation.py

log "node: the official openai Node.js SDK through a running retrybudget proxy"
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error && node --test)

log "go: the collector distribution and Jaeger (built in the background since the start)"
if ! wait "$GO_BUILD_PID"; then
  cat "$GO_BUILD_LOG"
  echo "the Go builds failed (log above)"
  exit 1
fi
cat "$GO_BUILD_LOG"
RETRYBUDGET_OTELCOL="$(cat "$GO_BUILD_LOG.otelcol")"
RETRYBUDGET_JAEGER="$(cat "$GO_BUILD_LOG.jaeger")"
export RETRYBUDGET_OTELCOL RETRYBUDGET_JAEGER
rm -f "$GO_BUILD_LOG" "$GO_BUILD_LOG.otelcol" "$GO_BUILD_LOG.jaeger"
"$RETRYBUDGET_OTELCOL" --version

log "python: the whole chain (proxy/demo -> collector agent -> gateway(s) -> Jaeger, Prometheus -> Alertmanager)"
$PY -m pytest -q -s -p no:cacheprovider tests/chain/test_chain.py tests/chain/test_scaleout.py

log "all stages passed"
