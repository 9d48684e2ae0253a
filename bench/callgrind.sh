#!/usr/bin/env bash
# User-space instructions per proxied request, counted rather than timed (wall-clock rounds on a
# shared 2-core machine move by 5 to 30%): graygate's release build under callgrind, on the
# memcached layout (examples/peer-seed-000.toml, `X-Real-IP: 10.0.0.7`) or, with LAYOUT=redis,
# the Redis one (examples/peer-seed-001.toml, `TOKEN: abc`), with ../shared/peer running (its
# start.sh).
# Two runs, of 200 and 6,200 keep-alive GETs to the canary from one curl; the difference over
# 6,000 leaves out start-up and shut-down (with 2,000, the start-up's own variance moved the count
# of one build by up to 1,000 instructions per request between runs).
#
#   bench/callgrind.sh [BIN]              # BIN defaults to target/release/graygate; about 3 minutes
#   LAYOUT=redis bench/callgrind.sh [BIN]
#   bench/callgrind.sh nginx              # the same count of plain nginx proxy_pass (as the peers'
#                                         # plain.conf: one worker, upstream keepalive), to the canary
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/graygate}
WORK=/tmp/graygate-callgrind
case ${LAYOUT:-memcached} in
    memcached) CONF=peer-seed-000 PORT=18201 HEADER="X-Real-IP: 10.0.0.7" ;;
    redis) CONF=peer-seed-001 PORT=18202 HEADER="TOKEN: abc" ;;
    *) echo "LAYOUT is memcached or redis, not $LAYOUT"; exit 1 ;;
esac
if [ "$BIN" = nginx ]; then PORT=18299; fi
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install -y valgrind)"; exit 1; }
[ "$(curl -s -m 3 http://127.0.0.1:19090/)" = canary ] || { echo "start ../shared/peer/start.sh first"; exit 1; }
if (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; then echo "port $PORT is taken: stop what listens there"; exit 1; fi

# One nginx process with no master, so that callgrind counts the worker that proxies.
nginx_conf() {
    cat <<EOF
master_process off;
daemon off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/tmp;
    proxy_temp_path $WORK/tmp;
    upstream canary { server 127.0.0.1:19090; keepalive 64; }
    server {
        listen 127.0.0.1:$PORT;
        location / {
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://canary;
        }
    }
}
EOF
}

count() {  # count N -> total instructions of a run with N requests
    rm -rf "$WORK"; mkdir -p "$WORK"
    if [ "$BIN" = nginx ]; then
        nginx_conf >"$WORK/nginx.conf"
        valgrind --tool=callgrind --callgrind-out-file="$WORK/out" nginx -p "$WORK" -c "$WORK/nginx.conf" >"$WORK/log" 2>&1 &
    else
        sed -e "s|graygate-data/$CONF|$WORK/store|" "$ROOT/examples/$CONF.toml" >"$WORK/c.toml"
        valgrind --tool=callgrind --callgrind-out-file="$WORK/out" "$BIN" run --config "$WORK/c.toml" >"$WORK/log" 2>&1 &
    fi
    local vg=$!
    for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
    local urls=() i
    for i in $(seq "$1"); do urls+=(http://127.0.0.1:$PORT/); done
    local answers
    answers=$(curl -s -H "$HEADER" "${urls[@]}" | grep -c '^canary$' || true)
    # graygate stops on SIGINT; nginx ends gracefully on SIGQUIT.
    if [ "$BIN" = nginx ]; then kill -QUIT "$vg"; else kill -INT "$vg"; fi
    wait "$vg" || true
    [ "$answers" = "$1" ] || { echo "$answers of $1 requests answered by the canary" >&2; exit 1; }
    callgrind_annotate "$WORK/out" | awk '/PROGRAM TOTALS/ && !n++ {gsub(",", "", $1); print $1}'
}
small=$(count 200)
large=$(count 6200)
echo "instructions per request: $(( (large - small) / 6000 ))  ($small for 200 requests, $large for 6,200)"
