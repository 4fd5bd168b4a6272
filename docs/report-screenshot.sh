#!/usr/bin/env bash
# Regenerates docs/report-screenshot.png: the HTML incident report of a fresh `retrybudget demo` run, rendered
# by headless Chromium. Run by hand after changing the report's look (never by CI: the picture changes with
# every run's timing). Needs chromium and python3 with websocket-client (tests/run.sh installs both).
#   docs/report-screenshot.sh            # uses target/debug/retrybudget (built if missing) or $RETRYBUDGET_BIN
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${RETRYBUDGET_BIN:-target/debug/retrybudget}"
[ -x "$BIN" ] || cargo build -p retrybudget
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
RETRYBUDGET_TRACE_URL='http://localhost:16686/trace/{trace_id}' \
  "$BIN" demo --duration 30s --rate 20 --listen 127.0.0.1:0 --evidence-file "$work/retrybudget-demo-evidence.jsonl" \
  | tail -n 20
python3 tests/report/browser.py "$work/retrybudget-demo-evidence.html" --screenshot docs/report-screenshot.png \
  --width 1120 --scale 1.5 >/dev/null
echo "wrote docs/report-screenshot.png"
