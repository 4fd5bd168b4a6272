#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind (NOT run in CI; results go in BENCHMARKS.md).
#
# On a shared VM, req/s and even CPU time per request swing by 10–30 % between runs, which hides a 5 % change.
# `valgrind --tool=callgrind` counts the instructions the proxy executes (every thread: connection threads,
# export threads, evidence writer): the same binary, inputs and settings give the same count to ~0.3 %, whatever
# else the machine does. Instructions are not time (a cache miss or a context switch costs no instruction), so
# this complements bench/cpu-per-request.sh rather than replacing it.
#
#   bash bench/instructions-per-request.sh "LABEL|BINARY full|off" ...
#   e.g. bash bench/instructions-per-request.sh "before|/tmp/rb-old full" "after|target/release/retrybudget full"
#
# Per target: the proxy starts under callgrind in front of an nginx origin (a fixed chat completion) and, for
# `full`, with a JSONL evidence file and OTLP/HTTP export to a live `rotel --exporter blackhole`; WARM_UP
# requests (1 500: past the first export of every signal, whose one-time client set-up — reqwest loading the
# system's root certificates, ~12 M instructions — is not per-request work; each connection thread fills its
# own batch of 512 log records, one per request, so with 2 threads the first log export comes after ~1 030),
# then the counters are zeroed and REQUESTS (2000) requests are sent over 4 kept-alive connections (distinct
# bodies); the process is stopped 1.5 s later (so the export threads have sent what they queued) and the count
# is divided by REQUESTS. Needs valgrind, nginx, python3 with rotel (`pip install --pre rotel`). Binds 127.0.0.1
# only; every process started is stopped by its pid.
set -uo pipefail
REQUESTS=${REQUESTS:-2000}
WARM_UP=${WARM_UP:-1500}
(($#)) || { sed -n 2,17p "$0"; exit 2; }
source "$(dirname "$0")/common.sh"
find_rotel instructions-per-request
command -v callgrind_control >/dev/null || { echo "instructions-per-request: needs valgrind" >&2; exit 2; }

scratch instr
ORIGIN_PORT=$(free_port)
nginx_conf origin "$ORIGIN_PORT" "default_type application/json; client_body_buffer_size 64k; return 200 '$COMPLETION';"
start_rotel

load() { # addr, requests: POSTs over 4 kept-alive connections, each answer checked
    python3 - "$1" "$2" <<'PY'
import sys, http.client, threading
host, port = sys.argv[1].rsplit(":", 1)
n = int(sys.argv[2])
def run(k):
    c = http.client.HTTPConnection(host, int(port))
    for i in range(n // 4):
        body = '{"model":"fake-model","messages":[{"role":"user","content":"benchmark placeholder %d-%d"}],"max_tokens":16}' % (k, i)
        c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"status {r.status}")
threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
PY
}

for variant in "$@"; do
    label=${variant%%|*}
    read -r bin mode <<<"${variant#*|}"
    cmd=(env -u OTEL_EXPORTER_OTLP_ENDPOINT -u RETRYBUDGET_EVIDENCE_FILE RETRYBUDGET_MAX_IN_FLIGHT=8192)
    args=(proxy --listen 127.0.0.1:0 --upstream "http://127.0.0.1:$ORIGIN_PORT")
    if [ "${mode:-full}" = full ]; then
        cmd+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$ROTEL_HTTP" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
            OTEL_METRIC_EXPORT_INTERVAL=1000 OTEL_BSP_MAX_QUEUE_SIZE=16384)
        args+=(--evidence-file "$TMP/evidence-$label.jsonl")
    fi
    rm -f "$TMP"/callgrind.out*
    "${cmd[@]}" valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out" "$bin" "${args[@]}" \
        >"$TMP/proxy.log" 2>&1 &
    pid=$!
    PIDS+=($pid)
    addr=$(wait_addr "$TMP/proxy.log" 60) || exit 1
    load "$addr" "$WARM_UP" || exit 1
    sleep 1.5
    callgrind_control -z "$pid" >/dev/null 2>&1
    load "$addr" "$REQUESTS" || exit 1
    sleep 1.5
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null
    total=0 # one file per dump; the last summary line of each
    for f in "$TMP"/callgrind.out*; do
        total=$((total + $(awk '/^(summary|totals):/ { t = $2 } END { print t + 0 }' "$f")))
    done
    printf "%-24s %8d instructions/request  (%d requests, %s)\n" "$label" $((total / REQUESTS)) "$REQUESTS" "${mode:-full}"
done
