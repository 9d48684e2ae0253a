#!/usr/bin/env bash
# Many connections at once: graygate and plain nginx (proxy_pass) in front of the same fast
# backend, in the same run, interleaved, with wrk opening CONNS connections (default 10,000).
# Counts the timeouts and socket errors of each: what a burst of new connections does to the
# listen backlog and the file descriptors.
#
#   bench/conns.sh                         # graygate = target/release/graygate
#   BEFORE_BIN=/path/to/old/graygate bench/conns.sh    # adds an earlier build in the same rounds
#
# Env: CONNS (10000) THREADS (2) DUR (10s) TIMEOUT (5s) REPS (3) BIN (graygate binary),
# MAX_CONNECTIONS (max_connections of BIN's graygate, not BEFORE_BIN's; unset: its default).
# Everything listens on 127.0.0.1 ports 184xx; one nginx worker and one graygate worker each.
# Creates /tmp/BENCH-RUNNING while wrk runs (removed on exit, also on failure).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/graygate}
CONNS=${CONNS:-10000} THREADS=${THREADS:-2} DUR=${DUR:-10s} TIMEOUT=${TIMEOUT:-5s} REPS=${REPS:-3}
WORK=/tmp/graygate-conns
for c in nginx wrk; do command -v $c >/dev/null || { echo "needs $c (apt-get install $c)"; exit 1; }; done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"   # as high as this machine allows
echo "open files: $(ulimit -n)"

pids=()
cleanup() {
    rm -f /tmp/BENCH-RUNNING
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for n in backend proxy; do
        [ -f "$WORK/$n/nginx.pid" ] && kill "$(cat "$WORK/$n/nginx.pid")" 2>/dev/null || true
    done
}
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK/backend" "$WORK/proxy"

nginx_conf() {  # nginx_conf NAME SERVER-BLOCK [UPSTREAM-BLOCK]
    cat >"$WORK/$1/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log warn;
worker_rlimit_nofile $(ulimit -n);
events { worker_connections 30000; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/$1/tmp;
    proxy_temp_path $WORK/$1/tmp;
    fastcgi_temp_path $WORK/$1/tmp;
    uwsgi_temp_path $WORK/$1/tmp;
    scgi_temp_path $WORK/$1/tmp;
    ${3:-}
    $2
}
CONF
    nginx -p "$WORK/$1/" -c "$WORK/$1/nginx.conf" -e "$WORK/$1/error.log"
}
# The backend (a small body), and nginx alone as a plain proxy to it (nginx's default backlog).
nginx_conf backend 'server { listen 127.0.0.1:18480 backlog=4096; location / { return 200 "prod\n"; } }'
nginx_conf proxy 'server { listen 127.0.0.1:18481; location / { proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://prod; } }' \
    'upstream prod { server 127.0.0.1:18480; keepalive 64; }'

gg_conf() {  # gg_conf PORT DIR [EXTRA-TOP-LEVEL-LINE]
    mkdir -p "$2"
    cat >"$2/graygate.toml" <<CONF
listen = ["127.0.0.1:$1"]
workers = 1
${3:-}

[store]
path = "data"

[[upstreams]]
name = "prod"
servers = ["127.0.0.1:18480"]

[policy]
[[policy.routes]]
service = "web"

[[policy.services]]
name = "web"
stable = "prod"
versions = { prod = "prod" }
CONF
}
start() {  # start BIN PORT NAME [EXTRA-TOP-LEVEL-LINE]
    gg_conf "$2" "$WORK/$3" "${4:-}"
    "$1" run --config "$WORK/$3/graygate.toml" >"$WORK/$3.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && return; sleep 0.1; done
    echo "graygate on :$2 did not start:"; cat "$WORK/$3.log"; exit 1
}
TARGETS=("nginx proxy_pass|18481")
start "$BIN" 18482 graygate "${MAX_CONNECTIONS:+max_connections = $MAX_CONNECTIONS}"; TARGETS+=("graygate|18482")
if [ -n "${BEFORE_BIN:-}" ]; then start "$BEFORE_BIN" 18483 before; TARGETS+=("graygate BEFORE|18483"); fi
for t in "${TARGETS[@]}"; do
    port=${t##*|}
    body=$(curl -s "http://127.0.0.1:$port/")
    [ "$body" = prod ] || { echo "${t%%|*} on :$port answered '$body', not 'prod'"; exit 1; }
done

touch /tmp/BENCH-RUNNING
RAW=$WORK/raw
: >"$RAW"
for rep in $(seq "$REPS"); do
    for t in "${TARGETS[@]}"; do
        name=${t%%|*} port=${t##*|}
        wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --timeout "$TIMEOUT" "http://127.0.0.1:$port/" >"$WORK/wrk-$port-$rep.txt" 2>&1 || true
        awk -v n="$port" '
            /Requests\/sec/ {rps=$2}
            /Socket errors/ {gsub(",",""); c=$4; r=$6; w=$8; t=$10}
            /Non-2xx/ {x=$5}
            END {printf "%s|%.0f|%d|%d|%d|%d|%d\n", n, rps, c, r, w, t, x}' "$WORK/wrk-$port-$rep.txt" >>"$RAW"
    done
done
rm -f /tmp/BENCH-RUNNING

echo "wrk -t$THREADS -c$CONNS -d$DUR --timeout $TIMEOUT, $REPS interleaved rounds (one line per run)"
printf '%-18s %6s %9s %8s %6s %6s %8s %8s\n' target port req/s connect read write timeout non-2xx
for t in "${TARGETS[@]}"; do
    name=${t%%|*} port=${t##*|}
    grep "^$port|" "$RAW" | while IFS='|' read -r p rps c r w to x; do
        printf '%-18s %6s %9s %8s %6s %6s %8s %8s\n' "$name" "$p" "$rps" "$c" "$r" "$w" "$to" "$x"
    done
done
