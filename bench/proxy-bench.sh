#!/usr/bin/env bash
# Whole-process benchmark of the proxy hop, in one invocation (NOT run in CI; results go in BENCHMARKS.md).
#
# Targets, all in front of the same origin (nginx, 1 worker, answering a fixed chat completion):
#   direct : load generator -> origin
#   nginx  : -> nginx reverse proxy (1 worker, upstream keepalive) -> origin          (the reference hop)
#   full   : -> retrybudget proxy, full evidence: JSONL file + OTLP/HTTP export to a live rotel receiver
#   off    : -> retrybudget proxy, evidence file off, OTLP off (spans and metrics still recorded in-process)
#   litellm: -> LiteLLM proxy (only with LITELLM=1 and `litellm` on PATH)
#
# Sections (SECTIONS, default all, in this order):
#   throughput : ROUNDS rounds; in each round every target gets a wrk run (order rotates per round); one table
#                with the median req/s, p50, p99, the CPU time per request of the target's own process (nginx's
#                worker, the whole proxy) and of the OTLP receiver meanwhile, and the ratios to direct and to
#                nginx, plus every round; then each full-evidence target's ratio to nginx round by round.
#   rate       : constant-rate, open-loop load (vegeta: requests leave on schedule, so a slow answer does not
#                hold back the next request — no coordinated omission) at each of RATES req/s; p50/p99/p99.9
#                per target and added over direct in the same round.
#   streams    : STREAMS concurrent SSE streams (a slow upstream: one chunk every 100 ms, 100 chunks = 10 s)
#                direct and through the proxy with full evidence, alternating; time to first byte, the
#                proxy's peak RSS and CPU.
#   scaling    : req/s and p99 at 1, 32, 256, 1024 connections; the proxy's RSS after each load.
#   startup    : exec to /healthz answering 200, STARTUP_RUNS times, evidence off and full.
# RSS idle is read from each proxy right after it answers /healthz, before any load.
#
# Needs: wrk, nginx, go (builds bench/loadtool and installs vegeta with `go install` into $BENCH_BIN),
# python3 with rotel (`pip install --pre rotel`), cargo, curl. Debian: apt-get install -y wrk nginx curl golang.
# Everything binds 127.0.0.1; every process started here is stopped by its pid on exit.
#
# Settings (environment): ROUNDS (3), DURATION (5s), CONNECTIONS (32), WARMUP (1s), RATES ("1000 5000"),
# RATE_DURATION (10s), STREAMS (1000), STREAM_ROUNDS (2), SCALE ("1 32 256 1024"), STARTUP_RUNS (10),
# SECTIONS, LITELLM (0), CARGO_TARGET_DIR, BENCH_BIN (default ~/.cache/retrybudget-bench/bin),
# RETRYBUDGET_BIN (a prebuilt binary to measure instead of building one), BASELINE (another retrybudget binary,
# e.g. a copy of the release build before a change: adds targets full@base and off@base to the throughput and
# fixed-rate sections, so before and after are measured in the same run, alternating).
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-1s}
RATES=${RATES:-"1000 5000"}
RATE_DURATION=${RATE_DURATION:-10s}
STREAMS=${STREAMS:-1000}
STREAM_ROUNDS=${STREAM_ROUNDS:-2}
SCALE=${SCALE:-"1 32 256 1024"}
STARTUP_RUNS=${STARTUP_RUNS:-10}
SECTIONS=${SECTIONS:-"throughput rate streams scaling startup"}
LITELLM=${LITELLM:-0}

missing=()
for tool in wrk nginx go cargo curl python3; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "proxy-bench: missing: ${missing[*]}" >&2
    echo "  Debian: apt-get update && apt-get install -y wrk nginx curl golang python3-pip" >&2
    exit 2
fi
# free_port, cpu_ticks, nginx_conf, rotel, the origin's fixed COMPLETION and the request BODY
source "$(dirname "$0")/common.sh"
find_rotel proxy-bench

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH_BIN=${BENCH_BIN:-$HOME/.cache/retrybudget-bench/bin}
mkdir -p "$BENCH_BIN"
echo "== building ${RETRYBUDGET_BIN:+(not retrybudget: using $RETRYBUDGET_BIN) }retrybudget --release (target dir $TARGET), bench/loadtool and vegeta"
if [ -n "${RETRYBUDGET_BIN:-}" ]; then
    BIN=$RETRYBUDGET_BIN
else
    (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release -q -p retrybudget)
    BIN="$TARGET/release/retrybudget"
fi
BASELINE=${BASELINE:-}
(cd "$ROOT/bench/loadtool" && go build -o "$BENCH_BIN/loadtool" .)
LOADTOOL="$BENCH_BIN/loadtool"
[ -x "$BENCH_BIN/vegeta" ] || GOBIN="$BENCH_BIN" go install github.com/tsenart/vegeta/v12@v12.13.0
VEGETA="$BENCH_BIN/vegeta"

scratch bench

wait_http() {
    for _ in $(seq 1 400); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "proxy-bench: $1 never answered" >&2
    return 1
}
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
hwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
field() { sed -nE "s/.*[ ^]$1=([^ ]+).*/\1/p" <<<" $2"; }



echo "== starting origin, nginx hop, rotel, proxies (full evidence / off) on 127.0.0.1"
ORIGIN_PORT=$(free_port)
nginx_conf origin "$ORIGIN_PORT" "default_type application/json; client_body_buffer_size 64k; return 200 '$COMPLETION';"
NGINX_PORT=$(free_port)
nginx_conf hop "$NGINX_PORT" 'proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";'
ORIGIN="127.0.0.1:$ORIGIN_PORT"
NGINX="127.0.0.1:$NGINX_PORT"
wait_http "http://$ORIGIN/healthz"
wait_http "http://$NGINX/healthz"
# The process doing each target's work, whose CPU time per request the throughput table reports: the one nginx
# worker (not its master), the proxy process (every thread: connections, exporters, evidence writer).
ORIGIN_WORKER=$(pgrep -P "${NGINX_MASTER[origin]}" | head -1)
HOP_WORKER=$(pgrep -P "${NGINX_MASTER[hop]}" | head -1)

start_rotel

EVIDENCE="$TMP/evidence.jsonl"
FULL_ENV=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$ROTEL_HTTP" OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf
    OTEL_METRIC_EXPORT_INTERVAL=5000 OTEL_SERVICE_NAME=retrybudget-bench
    # Three spans and a log record per call: at 6 000 calls/s the default queue (2 048 items) is a tenth of a
    # second of export backlog, and a starved exporter thread drops (and counts) items. An operator running
    # the proxy at thousands of calls/s sizes the queue the same way.
    OTEL_BSP_MAX_QUEUE_SIZE="${OTEL_BSP_MAX_QUEUE_SIZE:-16384}")
# `env -u` so a caller's own OTEL_* settings cannot switch evidence on for the "off" proxy.
OFF_CMD=(env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT -u OTEL_EXPORTER_OTLP_METRICS_ENDPOINT
    -u OTEL_EXPORTER_OTLP_LOGS_ENDPOINT -u RETRYBUDGET_EVIDENCE_FILE
    # The proxy's admission limits (default 1024 connections, 256 requests in flight) would refuse the
    # 1000-stream and 1024-connection loads with 503s; the bench measures the hop, not the limits.
    RETRYBUDGET_MAX_CONNECTIONS=8192 RETRYBUDGET_MAX_IN_FLIGHT=8192)
start_proxy() { # name log-file command...: starts it, waits for /healthz, sets ${name}_PID and ${name}_ADDR
    local name=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 &
    local pid=$!
    PIDS+=($pid)
    local addr
    addr=$(wait_addr "$log")
    wait_http "http://$addr/healthz"
    printf -v "${name}_PID" %s "$pid"
    printf -v "${name}_ADDR" %s "$addr"
}
start_proxy full "$TMP/full.log" "${OFF_CMD[@]}" "${FULL_ENV[@]}" \
    "$BIN" proxy --listen 127.0.0.1:0 --upstream "http://$ORIGIN" --evidence-file "$EVIDENCE"
start_proxy off "$TMP/off.log" "${OFF_CMD[@]}" "$BIN" proxy --listen 127.0.0.1:0 --upstream "http://$ORIGIN"
sed 's/^/   full proxy: /' "$TMP/full.log" | head -3
if [ -n "$BASELINE" ]; then
    start_proxy fullbase "$TMP/fullbase.log" "${OFF_CMD[@]}" "${FULL_ENV[@]}" \
        "$BASELINE" proxy --listen 127.0.0.1:0 --upstream "http://$ORIGIN" --evidence-file "$TMP/evidence-base.jsonl"
    start_proxy offbase "$TMP/offbase.log" "${OFF_CMD[@]}" "$BASELINE" proxy --listen 127.0.0.1:0 --upstream "http://$ORIGIN"
fi
IDLE_FULL=$(rss_mib "$full_PID")
IDLE_OFF=$(rss_mib "$off_PID")

TARGETS=(direct nginx full off)
declare -A ADDR=([direct]=$ORIGIN [nginx]=$NGINX [full]=$full_ADDR [off]=$off_ADDR)
declare -A WORKER=([direct]=$ORIGIN_WORKER [nginx]=$HOP_WORKER [full]=$full_PID [off]=$off_PID)
if [ -n "$BASELINE" ]; then
    ADDR[full@base]=$fullbase_ADDR
    ADDR[off@base]=$offbase_ADDR
    WORKER[full@base]=$fullbase_PID
    WORKER[off@base]=$offbase_PID
    TARGETS+=(full@base off@base)
fi
AUTH_HEADER=""
if [ "$LITELLM" = 1 ] && command -v litellm >/dev/null 2>&1; then
    LITELLM_PORT=$(free_port)
    cat >"$TMP/litellm.yaml" <<EOF
model_list:
  - model_name: fake-model
    litellm_params: { model: openai/fake-model, api_base: "http://$ORIGIN/v1", api_key: "sk-bench-placeholder" }
EOF
    LITELLM_MASTER_KEY=sk-bench-master LITELLM_LOCAL_MODEL_COST_MAP=True \
        litellm --config "$TMP/litellm.yaml" --host 127.0.0.1 --port "$LITELLM_PORT" --num_workers 1 >"$TMP/litellm.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$LITELLM_PORT/health/liveliness"
    ADDR[litellm]="127.0.0.1:$LITELLM_PORT"
    TARGETS+=(litellm)
    AUTH_HEADER='headers["Authorization"] = "Bearer sk-bench-master"'
fi

# Every request's body is distinct (a counter in the prompt), as real traffic is: the proxy recognises a
# byte-identical request that is still in flight as the caller's own re-send (`--caller-retries`), so 32
# connections sending one body would be measured as a retry storm, not as traffic.
cat >"$TMP/post.lua" <<EOF
local n = 0
local headers = { ["Content-Type"] = "application/json" }
$AUTH_HEADER
local head, tail = string.match('$BODY', '^(.*benchmark placeholder)(.*)$')
request = function()
    n = n + 1
    return wrk.format("POST", nil, headers, head .. " " .. n .. tail)
end
function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT rps=%.1f p50_ms=%.3f p99_ms=%.3f requests=%d non2xx=%d socket_errors=%d\n",
        summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
EOF
warm_wrk() { # target connections
    wrk -t1 -c"$2" -d"$WARMUP" -s "$TMP/post.lua" "http://${ADDR[$1]}/v1/chat/completions" >/dev/null 2>&1 || true
}
measure_wrk() { # target connections duration -> RESULT line
    wrk -t1 -c"$2" -d"$3" --latency -s "$TMP/post.lua" "http://${ADDR[$1]}/v1/chat/completions" | grep '^RESULT'
}
run_wrk() { # target connections duration -> RESULT line, after a warm-up
    warm_wrk "$1" "$2"
    measure_wrk "$1" "$2" "$3"
}
evidence_check() {
    local lines attempts dropped
    sleep 1.2 # the evidence writer flushes periodically
    # Every file: the proxy rotates the evidence file at 100 MiB (EVIDENCE.1, .2, …) under a long load.
    lines=$(find "$(dirname "$EVIDENCE")" -maxdepth 1 -name "$(basename "$EVIDENCE")*" -exec cat {} + | wc -l)
    attempts=$(curl -fsS "http://$full_ADDR/metrics" | awk '/^retrybudget_attempts_total/ { s += $NF } END { printf "%d", s }')
    dropped=$(curl -fsS "http://$full_ADDR/metrics" | awk '/^retrybudget_telemetry_dropped/ { s += $NF } END { printf "%d", s }')
    echo "   evidence (full proxy so far): $lines JSONL lines, retrybudget_attempts_total=$attempts, retrybudget_telemetry_dropped=$dropped"
}

LOAD="load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $LOAD"
echo "   wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'), nginx $(nginx -v 2>&1 | sed 's|.*/||'), vegeta v12.13.0, rotel $("$ROTEL" --version 2>&1 | awk '{print $2}')"
echo "   RSS idle: full $IDLE_FULL MiB, off $IDLE_OFF MiB${BASELINE:+ (baseline: full $(rss_mib "$fullbase_PID") MiB, off $(rss_mib "$offbase_PID") MiB)}"
echo "   binary: $BIN${BASELINE:+; baseline: $BASELINE}"

declare -A ROWS
section() { [[ " $SECTIONS " == *" $1 "* ]]; }

# === throughput ===
if section throughput; then
    echo
    echo "== throughput: $ROUNDS rounds of wrk -t1 -c$CONNECTIONS -d$DURATION (after a $WARMUP warm-up) per target, order rotating"
    declare -A RPS P50 P99 CPU RCV ROUND_RPS
    n=${#TARGETS[@]}
    for round in $(seq 1 "$ROUNDS"); do
        line_out="   round $round:"
        for k in $(seq 0 $((n - 1))); do
            t=${TARGETS[$(((k + round - 1) % n))]}
            warm_wrk "$t" "$CONNECTIONS"
            c0=$(cpu_ticks "${WORKER[$t]}")
            v0=$(cpu_ticks "$ROTEL_PID")
            r=$(measure_wrk "$t" "$CONNECTIONS" "$DURATION")
            c1=$(cpu_ticks "${WORKER[$t]}")
            v1=$(cpu_ticks "$ROTEL_PID")
            RPS[$t]+=" $(field rps "$r")"
            ROUND_RPS[$t,$round]=$(field rps "$r")
            # CPU time of the target's own process per measured request: less noisy than req/s on a shared
            # machine, where the load generator and the origin share the same cores.
            CPU[$t]+=" $(awk -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v n="$(field requests "$r")" 'BEGIN { if (n > 0) printf "%.1f", c / hz * 1e6 / n; else print "n/a" }')"
            # The OTLP receiver's CPU per request meanwhile: on these shared cores, the rest of the evidence's cost.
            RCV[$t]+=" $(awk -v c=$((v1 - v0)) -v hz="$(getconf CLK_TCK)" -v n="$(field requests "$r")" 'BEGIN { if (n > 0) printf "%.1f", c / hz * 1e6 / n; else print "n/a" }')"
            P50[$t]+=" $(field p50_ms "$r")"
            P99[$t]+=" $(field p99_ms "$r")"
            errs="$(field non2xx "$r")/$(field socket_errors "$r")"
            line_out+=" $t $(field rps "$r") req/s p50 $(field p50_ms "$r") p99 $(field p99_ms "$r") ms (err $errs);"
        done
        echo "$line_out"
    done
    evidence_check
    echo
    echo "(CPU µs/req: CPU time of the target's process per request over the measured run — nginx's worker, or the"
    echo " whole proxy process; for direct, the origin's worker. Receiver µs/req: the OTLP receiver's, meanwhile.)"
    echo
    echo "| target | req/s (median) | p50 ms | p99 ms | × direct | × nginx hop | p99 × nginx | CPU µs/req | CPU × nginx hop | receiver µs/req | rounds req/s |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    d_rps=$(median <<<"${RPS[direct]}")
    n_rps=$(median <<<"${RPS[nginx]}")
    n_p99=$(median <<<"${P99[nginx]}")
    n_cpu=$(median <<<"${CPU[nginx]}")
    for t in "${TARGETS[@]}"; do
        m=$(median <<<"${RPS[$t]}")
        p99=$(median <<<"${P99[$t]}")
        cpu=$(median <<<"${CPU[$t]}")
        echo "| $t | $m | $(median <<<"${P50[$t]}") | $p99 | $(ratio "$m" "$d_rps") | $(ratio "$m" "$n_rps") | $(ratio "$p99" "$n_p99") | $cpu | $(ratio "$cpu" "$n_cpu") | $(median <<<"${RCV[$t]}") |${RPS[$t]} |"
    done
    echo
    for t in "${TARGETS[@]}"; do
        [[ $t == full* ]] || continue
        per=""
        for round in $(seq 1 "$ROUNDS"); do per+=" $(ratio "${ROUND_RPS[$t,$round]}" "${ROUND_RPS[nginx,$round]}")"; done
        echo "$t × nginx hop, round by round (the same round's nginx):$per"
    done
    f_rps=$(median <<<"${RPS[full]}")
    echo
    echo "full evidence / evidence off (median req/s): $(ratio "$f_rps" "$(median <<<"${RPS[off]}")")"
    if [ -n "$BASELINE" ]; then
        echo "full / full@base (after / before, median req/s): $(ratio "$f_rps" "$(median <<<"${RPS[full@base]}")")"
    fi
    echo "   RSS after throughput: full $(rss_mib "$full_PID") MiB, off $(rss_mib "$off_PID") MiB"
fi

# === fixed rates ===
if section rate; then
    echo
    echo "== fixed rates: vegeta attack -rate=R -duration=$RATE_DURATION (open loop), order rotating; latency in ms"
    # 20 000 distinct bodies, cycled (vegeta's JSON target format): a body repeats only after its earlier
    # request was answered, so none looks like a caller's re-send of a request still in flight.
    python3 - "$BODY" "$TMP/bodies.jsonl" <<'PY'
import base64, json, sys
body, out = sys.argv[1], sys.argv[2]
with open(out, "w") as f:
    for i in range(20000):
        b = body.replace("benchmark placeholder", f"benchmark placeholder {i}")
        f.write(json.dumps({"method": "POST", "url": "URL", "header": {"Content-Type": ["application/json"]},
                            "body": base64.b64encode(b.encode()).decode()}) + "\n")
PY
    rate_targets=(direct nginx full off)
    [ -n "$BASELINE" ] && rate_targets+=(full@base)
    for rate in $RATES; do
        declare -A R50=() R99=() R999=() RSUCC=()
        nt=${#rate_targets[@]}
        for round in $(seq 1 "$ROUNDS"); do
            line_out="   $rate req/s round $round:"
            for k in $(seq 0 $((nt - 1))); do
                t=${rate_targets[$(((k + round - 1) % nt))]}
                sed "s|\"URL\"|\"http://${ADDR[$t]}/v1/chat/completions\"|" "$TMP/bodies.jsonl" >"$TMP/targets.jsonl"
                "$VEGETA" attack -format=json -targets="$TMP/targets.jsonl" -rate="$rate/s" -duration=1s >/dev/null 2>&1 || true
                "$VEGETA" attack -format=json -targets="$TMP/targets.jsonl" -rate="$rate/s" -duration="$RATE_DURATION" >"$TMP/rate.bin"
                # latency column (ns) of every result, sorted: exact percentiles, p99.9 included.
                "$VEGETA" encode --to csv <"$TMP/rate.bin" | awk -F, '{ print $3, $2 }' >"$TMP/rate.txt"
                ok=$(awk '$2 == 200' "$TMP/rate.txt" | wc -l)
                total=$(wc -l <"$TMP/rate.txt")
                read -r p50 p99 p999 < <(awk '{ print $1 }' "$TMP/rate.txt" | sort -n | awk '{ v[NR] = $1 } END {
                    i50 = int(NR * 0.50 + 0.5); i99 = int(NR * 0.99 + 0.5); i999 = int(NR * 0.999 + 0.5);
                    if (i50 < 1) i50 = 1; if (i99 < 1) i99 = 1; if (i999 < 1) i999 = 1;
                    printf "%.3f %.3f %.3f\n", v[i50] / 1e6, v[i99] / 1e6, v[i999] / 1e6 }')
                R50[$t]+=" $p50"
                R99[$t]+=" $p99"
                R999[$t]+=" $p999"
                RSUCC[$t]+=" $ok/$total"
                line_out+=" $t p50 $p50 p99 $p99 p99.9 $p999 ($ok/$total ok);"
            done
            echo "$line_out"
        done
        echo
        echo "| $rate req/s | p50 ms | p99 ms | p99.9 ms | added p50 µs | added p99 µs | added p99.9 µs | 200s/sent per round |"
        echo "|---|---|---|---|---|---|---|---|"
        d50=$(median <<<"${R50[direct]}")
        d99=$(median <<<"${R99[direct]}")
        d999=$(median <<<"${R999[direct]}")
        for t in "${rate_targets[@]}"; do
            m50=$(median <<<"${R50[$t]}")
            m99=$(median <<<"${R99[$t]}")
            m999=$(median <<<"${R999[$t]}")
            add() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (a - b) * 1000 }'; }
            echo "| $t | $m50 | $m99 | $m999 | $(add "$m50" "$d50") | $(add "$m99" "$d99") | $(add "$m999" "$d999") |${RSUCC[$t]} |"
        done
        unset R50 R99 R999 RSUCC
    done
    evidence_check
    echo "   RSS after fixed rates: full $(rss_mib "$full_PID") MiB, off $(rss_mib "$off_PID") MiB"
fi

# === streams ===
if section streams; then
    echo
    "$LOADTOOL" sse-upstream --listen 127.0.0.1:0 --interval 100ms --chunks 100 >"$TMP/sse.log" 2>&1 &
    PIDS+=($!)
    SSE=$(wait_addr "$TMP/sse.log")
    start_proxy sproxy "$TMP/sproxy.log" "${OFF_CMD[@]}" "${FULL_ENV[@]}" \
        "$BIN" proxy --listen 127.0.0.1:0 --upstream "http://$SSE" --evidence-file "$TMP/evidence-streams.jsonl"
    SPROXY_PID=$sproxy_PID
    SPROXY=$sproxy_ADDR
    echo "== streams: $STREAMS concurrent SSE streams (100 chunks, one every 100 ms), started over 1 s; direct and via the proxy (full evidence), alternating"
    echo "   stream proxy RSS idle: $(rss_mib "$SPROXY_PID") MiB"
    declare -A TT50 TT99
    for round in $(seq 1 "$STREAM_ROUNDS"); do
        for t in direct proxy; do
            if [ "$t" = direct ]; then url="http://$SSE/v1/chat/completions"; else url="http://$SPROXY/v1/chat/completions"; fi
            c0=$(cpu_ticks "$SPROXY_PID")
            t0=$(date +%s.%N)
            peak=0
            "$LOADTOOL" streams -url "$url" -n "$STREAMS" -ramp 1s >"$TMP/streams.out" 2>"$TMP/streams.err" &
            lpid=$!
            while kill -0 "$lpid" 2>/dev/null; do
                r=$(rss_mib "$SPROXY_PID")
                peak=$(awk -v a="$r" -v b="$peak" 'BEGIN { print (a > b) ? a : b }')
                sleep 0.2
            done
            wait "$lpid"
            t1=$(date +%s.%N)
            c1=$(cpu_ticks "$SPROXY_PID")
            res=$(grep '^RESULT' "$TMP/streams.out")
            cpu=$(awk -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" 'BEGIN { printf "%.0f", 100 * c / hz / w }')
            TT50[$t]+=" $(field ttfb_p50_ms "$res")"
            TT99[$t]+=" $(field ttfb_p99_ms "$res")"
            extra=""
            [ "$t" = proxy ] && extra=" proxy peak RSS $peak MiB, proxy CPU $cpu % of one core over the run"
            echo "   round $round $t: ${res#RESULT };$extra"
            head -2 "$TMP/streams.err" | sed 's/^/      /'
        done
    done
    echo "   stream proxy RSS after: $(rss_mib "$SPROXY_PID") MiB (high-water mark $(hwm_mib "$SPROXY_PID") MiB)"
    d50=$(median <<<"${TT50[direct]}")
    p50=$(median <<<"${TT50[proxy]}")
    echo "   added time to first byte (median of rounds): p50 $(awk -v a="$p50" -v b="$d50" 'BEGIN { printf "%.3f", a - b }') ms, p99 $(awk -v a="$(median <<<"${TT99[proxy]}")" -v b="$(median <<<"${TT99[direct]}")" 'BEGIN { printf "%.3f", a - b }') ms"
fi

# === scaling ===
if section scaling; then
    echo
    echo "== scaling: wrk -t1 -d$DURATION at each connection count; direct, nginx, full (one round each)"
    echo "| connections | direct req/s | nginx req/s | full req/s | direct p99 ms | nginx p99 ms | full p99 ms | full RSS after MiB |"
    echo "|---|---|---|---|---|---|---|---|"
    for c in $SCALE; do
        row="| $c"
        p99s=""
        for t in direct nginx full; do
            r=$(run_wrk "$t" "$c" "$DURATION")
            row+=" | $(field rps "$r")"
            p99s+=" | $(field p99_ms "$r")"
        done
        echo "$row$p99s | $(rss_mib "$full_PID") |"
    done
    evidence_check
fi

# === startup ===
if section startup; then
    echo
    SPORT=$(free_port)
    echo "== startup: exec to /healthz answering, $STARTUP_RUNS runs each"
    r=$("$LOADTOOL" startup -url "http://127.0.0.1:$SPORT/healthz" -runs "$STARTUP_RUNS" -- \
        "${OFF_CMD[@]}" "$BIN" proxy --listen "127.0.0.1:$SPORT" --upstream "http://$ORIGIN")
    echo "   evidence off: ${r#RESULT }"
    r=$("$LOADTOOL" startup -url "http://127.0.0.1:$SPORT/healthz" -runs "$STARTUP_RUNS" -- \
        "${OFF_CMD[@]}" "${FULL_ENV[@]}" "$BIN" proxy --listen "127.0.0.1:$SPORT" --upstream "http://$ORIGIN" --evidence-file "$TMP/evidence-start.jsonl")
    echo "   full evidence: ${r#RESULT }"
fi

echo
echo "== done; load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
