# Shared by the bench scripts (sourced, not run): the fixed completion the origin answers, the request body,
# nginx with one worker as the origin and as the reference hop, and rotel as the OTLP receiver. The sourcing
# script calls `scratch NAME` first (TMP, PIDS, and their clean-up on exit) and sets ORIGIN_PORT before
# nginx_conf.

COMPLETION='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"fake-model","choices":[{"index":0,"message":{"role":"assistant","content":"This is a fixed benchmark reply."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}'
BODY='{"model":"fake-model","messages":[{"role":"user","content":"benchmark placeholder"}],"max_tokens":16}'

# TMP: a scratch directory, removed on exit; PIDS: the processes started, each stopped by its pid on exit.
scratch() { # name
    TMP=$(mktemp -d -t "retrybudget-$1.XXXXXX")
    PIDS=()
    trap stop_all EXIT INT TERM
}
stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}

# Prints the address a proxy logged in LOG ("listening on http://…") once it has, waiting at most SECONDS (20);
# else shows the log and fails.
wait_addr() { # log, seconds
    local log=$1
    for _ in $(seq 1 $((${2:-20} * 20))); do
        if grep -q 'listening on http://' "$log" 2>/dev/null; then
            grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's|listening on http://||'
            return 0
        fi
        sleep 0.05
    done
    echo "no address in $log (the process did not start?):" >&2
    cat "$log" >&2
    return 1
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# User + system CPU time of a process (all its threads), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# Starts nginx (1 worker) named NAME on 127.0.0.1:PORT answering `location /` with BODY; NGINX_MASTER[NAME] is
# its master's pid (the worker is its child: `pgrep -P`).
nginx_conf() { # name, port, location body
    local dir="$TMP/$1"
    mkdir -p "$dir/logs" "$dir/tmp"
    {
        if [ "$(id -u)" = 0 ]; then echo "user root;"; fi
        cat <<EOF
worker_processes 1;
worker_rlimit_nofile 65536;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
    upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 256; }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / { $3 }
    }
}
EOF
    } >"$dir/nginx.conf"
    nginx -c "$dir/nginx.conf" -p "$dir" -g 'daemon off;' >"$dir/stdout.log" 2>&1 &
    PIDS+=($!)
    NGINX_MASTER[$1]=$!
}
declare -A NGINX_MASTER

# ROTEL: rotel's agent (ROTEL_AGENT, else the one `pip install --pre rotel` ships); exits 2 with that hint if
# there is none. The argument names the calling script in the message.
find_rotel() {
    ROTEL=${ROTEL_AGENT:-$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))' 2>/dev/null || true)}
    [ -x "$ROTEL" ] || { echo "$1: no rotel-agent: pip install --pre rotel (or set ROTEL_AGENT)" >&2; exit 2; }
}

# Starts rotel as a live OTLP receiver that discards what it gets, on free ports ROTEL_GRPC and ROTEL_HTTP;
# ROTEL_PID is its pid. Returns once its HTTP port accepts connections.
start_rotel() {
    ROTEL_GRPC=$(free_port)
    ROTEL_HTTP=$(free_port)
    "$ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$ROTEL_GRPC" --otlp-http-endpoint "127.0.0.1:$ROTEL_HTTP" \
        --exporter blackhole --pid-file "$TMP/rotel.pid" --log-file "$TMP/rotel.log" >"$TMP/rotel.out" 2>&1 &
    ROTEL_PID=$!
    PIDS+=($ROTEL_PID)
    for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$ROTEL_HTTP") 2>/dev/null && break; sleep 0.05; done
}
