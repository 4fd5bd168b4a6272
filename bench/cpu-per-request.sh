#!/usr/bin/env bash
# CPU time per proxied request, side by side (NOT run in CI; results go in BENCHMARKS.md).
#
# On a small shared machine req/s swings ±30 % between rounds; the CPU time the hop's own process spends per
# request moves far less, and it is what a sidecar costs its host. This runs the nginx hop and each variant
# given on the command line in front of one origin (nginx, 1 worker, a fixed chat completion), in alternating
# rounds, and prints per target: req/s, CPU µs per request (nginx: its worker; a proxy: the whole process, every
# thread), and context switches per request; and the CPU the OTLP receiver (rotel) and the origin's worker spent
# per request meanwhile (the rest of the evidence's cost on a shared machine).
#
#   bash bench/cpu-per-request.sh "LABEL|[VAR=value ...] BINARY full|full-grpc|off|otlp|jsonl" ...
#   e.g. bash bench/cpu-per-request.sh "old|/tmp/rb-old full" "new|target/release/retrybudget full" \
#                                      "new-1-thread|RETRYBUDGET_THREADS=1 target/release/retrybudget full"
#
# full = JSONL evidence file + OTLP/HTTP to a live `rotel --exporter blackhole`; full-grpc = the same over OTLP/gRPC;
# off = neither; otlp, jsonl = one. The load is
# `wrk -t1 -c$CONNECTIONS` for $DURATION seconds after a 1 s warm-up, distinct bodies (a counter in the
# prompt). SYSCALLS=1 adds syscalls per request (`perf stat` over all but the last second of the
# run; its tracepoint slows every target). Settings: ROUNDS (2),
# DURATION (5), CONNECTIONS (32). Needs wrk, nginx, python3 with rotel (`pip install --pre rotel`). Binds 127.0.0.1 only;
# every process started is stopped by its pid.
set -uo pipefail
ROUNDS=${ROUNDS:-2}
SECS=${DURATION:-5}
WINDOW=$((SECS > 2 ? SECS - 1 : 1)) # seconds of the measured run that SYSCALLS=1 counts
CONNECTIONS=${CONNECTIONS:-32}
(($#)) || { sed -n 2,18p "$0"; exit 2; }
source "$(dirname "$0")/common.sh"
find_rotel cpu-per-request
ulimit -n 65536 2>/dev/null || true

scratch cpu
ORIGIN_PORT=$(free_port)
HOP_PORT=$(free_port)
nginx_conf origin "$ORIGIN_PORT" "default_type application/json; client_body_buffer_size 64k; return 200 '$COMPLETION';"
nginx_conf hop "$HOP_PORT" 'proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";'
start_rotel
sleep 0.5 # nginx's worker
HOP_WORKER=$(pgrep -P "${NGINX_MASTER[hop]}" | head -1)
ORIGIN_WORKER=$(pgrep -P "${NGINX_MASTER[origin]}" | head -1)
cat >"$TMP/post.lua" <<'EOF'
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, '{"model":"fake-model","messages":[{"role":"user","content":"benchmark placeholder ' .. n .. '"}],"max_tokens":16}')
end
EOF
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }'; }
measure() { # label pid addr
    local url="http://$3/v1/chat/completions"
    wrk -t1 -c"$CONNECTIONS" -d1s -s "$TMP/post.lua" "$url" >/dev/null 2>&1
    local t0 c0 t1 c1 out rps sp=""
    t0=$(cpu_ticks "$2"); c0=$(switches "$2"); r0=$(cpu_ticks "$ROTEL_PID"); o0=$(cpu_ticks "$ORIGIN_WORKER")
    if [ "${SYSCALLS:-0}" = 1 ]; then
        perf stat -e raw_syscalls:sys_enter -p "$2" -o "$TMP/stat" -- sleep "$WINDOW" >/dev/null 2>&1 &
        sp=$!
    fi
    out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECS}s" -s "$TMP/post.lua" "$url")
    t1=$(cpu_ticks "$2"); c1=$(switches "$2"); r1=$(cpu_ticks "$ROTEL_PID"); o1=$(cpu_ticks "$ORIGIN_WORKER")
    rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
    awk -v l="$1" -v rps="$rps" -v t=$((t1 - t0)) -v c=$((c1 - c0)) -v r=$((r1 - r0)) -v o=$((o1 - o0)) \
        -v s="$SECS" -v hz="$(getconf CLK_TCK)" 'BEGIN {
        n = rps * s; printf "%-24s %8.0f req/s  CPU %6.1f µs/req  %5.2f context switches/req  (%.0f %% of one CPU)  receiver %5.1f µs/req  origin %5.1f µs/req\n",
        l, rps, t / hz * 1e6 / n, c / n, 100 * t / hz / s, r / hz * 1e6 / n, o / hz * 1e6 / n }'
    grep -E 'Non-2xx|Socket errors' <<<"$out" | sed 's/^/    /'
    if [ -n "$sp" ]; then
        wait "$sp"
        awk -v n="$(awk -v r="$rps" -v w="$WINDOW" 'BEGIN { print r * w }')" '/sys_enter/ { gsub(",", "", $1); printf "    %.2f syscalls/req\n", $1 / n }' "$TMP/stat"
    fi
}
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    measure nginx-hop "$HOP_WORKER" "127.0.0.1:$HOP_PORT"
    for variant in "$@"; do
        label=${variant%%|*}
        read -r -a words <<<"${variant#*|}"
        envs=()
        while [[ ${words[0]} == *=* ]]; do envs+=("${words[0]}"); words=("${words[@]:1}"); done
        bin=${words[0]}
        mode=${words[1]:-full}
        cmd=(env -u OTEL_EXPORTER_OTLP_ENDPOINT -u RETRYBUDGET_EVIDENCE_FILE RETRYBUDGET_MAX_IN_FLIGHT=8192 "${envs[@]}")
        args=(proxy --listen 127.0.0.1:0 --upstream "http://127.0.0.1:$ORIGIN_PORT")
        case $mode in
        full | otlp)
            cmd+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$ROTEL_HTTP" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
                OTEL_METRIC_EXPORT_INTERVAL=5000 OTEL_BSP_MAX_QUEUE_SIZE=16384) ;;
        full-grpc)
            cmd+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$ROTEL_GRPC" OTEL_EXPORTER_OTLP_PROTOCOL=grpc
                OTEL_METRIC_EXPORT_INTERVAL=5000 OTEL_BSP_MAX_QUEUE_SIZE=16384) ;;
        esac
        if [ "$mode" = full ] || [ "$mode" = full-grpc ] || [ "$mode" = jsonl ]; then
            args+=(--evidence-file "$TMP/evidence-$label-$round.jsonl")
        fi
        "${cmd[@]}" "$bin" "${args[@]}" >"$TMP/proxy.log" 2>&1 &
        pid=$!
        PIDS+=($pid)
        addr=$(wait_addr "$TMP/proxy.log") || exit 1
        measure "$label" "$pid" "$addr"
        kill "$pid"
        wait "$pid" 2>/dev/null
    done
done
