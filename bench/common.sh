# Shared by bench/proxy-bench.sh and bench/cpu-per-request.sh (sourced, not run): the fixed completion the
# origin answers, the request body, and nginx with one worker as the origin and as the reference hop.
# The sourcing script sets TMP (a scratch directory it removes) and ORIGIN_PORT (before nginx_conf), and has a
# PIDS array of the processes it stops on exit.

COMPLETION='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"fake-model","choices":[{"index":0,"message":{"role":"assistant","content":"This is a fixed benchmark reply."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16}}'
BODY='{"model":"fake-model","messages":[{"role":"user","content":"benchmark placeholder"}],"max_tokens":16}'

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
