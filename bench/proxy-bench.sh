#!/usr/bin/env bash
# Whole-process benchmark of the proxy hop (NOT run in CI).
#
# Side by side, in one run, at the same connection count:
#   direct : wrk -> retrybudget fake-upstream
#   proxy  : wrk -> retrybudget proxy -> fake-upstream
#   nginx  : wrk -> nginx (proxy_pass, upstream keepalive) -> fake-upstream   (the reference proxy hop)
# Prints requests/s and p99 latency for each, and the ratios proxy/direct and nginx/direct.
#
# Installs nothing: needs wrk and nginx (Debian: apt-get install -y wrk nginx), cargo and curl.
# Everything binds 127.0.0.1; every process started here is stopped by its pid on exit.
#
# Settings (environment): DURATION (default 10s), CONNECTIONS (64), THREADS (2), WARMUP (2s),
# CARGO_TARGET_DIR (default <repo>/target).
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WARMUP=${WARMUP:-2s}

missing=()
for tool in wrk nginx cargo curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "proxy-bench: missing: ${missing[*]}" >&2
    echo "  install on Debian/Ubuntu: apt-get update && apt-get install -y wrk nginx curl" >&2
    echo "  (cargo: https://rustup.rs)" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
echo "== building retrybudget --release (target dir $TARGET)"
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release -q -p retrybudget)
BIN="$TARGET/release/retrybudget"

TMP=$(mktemp -d -t retrybudget-bench.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

# Waits for a "listening on http://ADDR" line in $1 and prints ADDR.
wait_addr() {
    local log=$1 i
    for i in $(seq 1 200); do
        if grep -q 'listening on http://' "$log" 2>/dev/null; then
            grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's|listening on http://||'
            return 0
        fi
        sleep 0.05
    done
    echo "proxy-bench: no address in $log:" >&2
    cat "$log" >&2
    return 1
}

free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "proxy-bench: no free port found" >&2
    return 1
}

wait_http() {
    local url=$1
    for _ in $(seq 1 200); do
        curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "proxy-bench: $url never answered" >&2
    return 1
}

echo "== starting fake-upstream, proxy and nginx on 127.0.0.1"
"$BIN" fake-upstream --listen 127.0.0.1:0 >"$TMP/fake.log" 2>&1 &
PIDS+=($!)
FAKE=$(wait_addr "$TMP/fake.log")

"$BIN" proxy --listen 127.0.0.1:0 --upstream "http://$FAKE" >"$TMP/proxy.log" 2>&1 &
PIDS+=($!)
PROXY=$(wait_addr "$TMP/proxy.log")

NGINX_PORT=$(free_port)
mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"
{
    if [ "$(id -u)" = 0 ]; then echo "user root;"; fi
    cat <<EOF
worker_processes auto;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/tmp/body;
    proxy_temp_path $TMP/nginx/tmp/proxy;
    fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
    scgi_temp_path $TMP/nginx/tmp/scgi;
    upstream fake { server $FAKE; keepalive 128; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
} >"$TMP/nginx/nginx.conf"
nginx -c "$TMP/nginx/nginx.conf" -p "$TMP/nginx" -g 'daemon off;' >"$TMP/nginx/stdout.log" 2>&1 &
PIDS+=($!)
NGINX="127.0.0.1:$NGINX_PORT"

wait_http "http://$FAKE/_control/health"
wait_http "http://$PROXY/healthz"
wait_http "http://$NGINX/_control/health"

cat >"$TMP/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"model":"fake-model","messages":[{"role":"user","content":"benchmark placeholder"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("RESULT rps=%.1f p50_ms=%.3f p99_ms=%.3f requests=%d non2xx=%d socket_errors=%d\n",
        summary.requests / (summary.duration / 1e6),
        latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

declare -A RPS P99 P50 ERRS
for target in direct proxy nginx; do
    case $target in
        direct) addr=$FAKE ;;
        proxy) addr=$PROXY ;;
        nginx) addr=$NGINX ;;
    esac
    url="http://$addr/v1/chat/completions"
    echo "== $target: warm-up $WARMUP, then wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency POST $url"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$TMP/post.lua" "$url" >/dev/null
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$TMP/post.lua" "$url")
    line=$(grep '^RESULT' <<<"$out")
    RPS[$target]=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$line")
    P50[$target]=$(sed -E 's/.*p50_ms=([0-9.]+).*/\1/' <<<"$line")
    P99[$target]=$(sed -E 's/.*p99_ms=([0-9.]+).*/\1/' <<<"$line")
    ERRS[$target]=$(sed -E 's/.*non2xx=([0-9]+) socket_errors=([0-9]+).*/\1 non-2xx, \2 socket errors/' <<<"$line")
done

echo
echo "== results (wrk -t$THREADS -c$CONNECTIONS -d$DURATION, POST /v1/chat/completions, $(nproc) CPUs shared by wrk and the servers)"
printf '%-8s %12s %10s %10s   %s\n' target requests/s p50_ms p99_ms errors
for target in direct proxy nginx; do
    printf '%-8s %12s %10s %10s   %s\n' "$target" "${RPS[$target]}" "${P50[$target]}" "${P99[$target]}" "${ERRS[$target]}"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
echo "throughput proxy/direct = $(ratio "${RPS[proxy]}" "${RPS[direct]}")   nginx/direct = $(ratio "${RPS[nginx]}" "${RPS[direct]}")"
echo "p99        proxy/direct = $(ratio "${P99[proxy]}" "${P99[direct]}")   nginx/direct = $(ratio "${P99[nginx]}" "${P99[direct]}")"
attempts=$(curl -fsS "http://$PROXY/metrics" | awk '/^retrybudget_attempts_total/ { s += $NF } END { print s + 0 }')
echo "proxy evidence: retrybudget_attempts_total = $attempts"
