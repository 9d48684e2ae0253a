#!/usr/bin/env bash
# Restart against upgrade under load: how many requests fail when graygate is stopped and started
# again (what a plain `systemctl restart` does) and when it is upgraded in place with SIGUSR2
# (`systemctl reload` with deploy/graygate.service), in interleaved rounds.
#
#   bench/upgrade.sh            # ~1 minute; prints a table
#
# wrk (-t2 -c50, 8 s) runs against graygate on the embedded store, proxying to nginx on loopback;
# 3 s into each round graygate is restarted or upgraded. wrk counts a request written to a
# connection that is then refused or closed as a read or write error.
# Env: ROUNDS (default 2), BIN (default target/release/graygate, built when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/graygate-upgrade.XXXXXX)
ROUNDS=${ROUNDS:-2}
cd "$ROOT"
for c in nginx wrk curl; do command -v "$c" >/dev/null || { echo "needs $c"; exit 1; }; done
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN=$ROOT/target/release/graygate
fi

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    pkill -f "$WORK/graygate.toml" 2>/dev/null || true
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
STABLE=$(free_port) GG=$(free_port) ADMIN=$(free_port)
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon on;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$STABLE; location / { return 200 "stable\n"; } }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log"
cat >"$WORK/graygate.toml" <<EOF
listen = ["127.0.0.1:$GG"]
workers = 1
[store]
kind = "embedded"
path = "$WORK/data"
[admin]
listen = "127.0.0.1:$ADMIN"
[[upstreams]]
name = "stable"
servers = ["127.0.0.1:$STABLE"]
[policy]
[[policy.routes]]
service = "web"
[[policy.services]]
name = "web"
stable = "stable"
versions = { stable = "stable" }
EOF

start() {
    "$BIN" run --config "$WORK/graygate.toml" >>"$WORK/run.log" 2>&1 &
    for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$GG/" && return; sleep 0.01; done
    echo "graygate did not start:"; cat "$WORK/run.log"; exit 1
}
serving_pid() { pgrep -f "run --config $WORK/graygate.toml" | tail -1; }

printf "%-8s %10s %8s %8s %8s %8s %10s\n" "round" "requests" "connect" "read" "write" "timeout" "non-2xx"
for round in $(seq "$ROUNDS"); do
    for mode in restart upgrade; do
        start
        pid=$(serving_pid)
        wrk -t2 -c50 -d8s "http://127.0.0.1:$GG/" >"$WORK/wrk.txt" 2>&1 &
        w=$!
        sleep 3
        if [ "$mode" = restart ]; then
            kill -TERM "$pid"
            while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
            start
        else
            kill -USR2 "$pid"
        fi
        wait "$w"
        req=$(awk '/requests in/{print $1}' "$WORK/wrk.txt")
        read -r co rd wr to < <(awk -F'[ ,]+' '/Socket errors/{print $5, $7, $9, $11}' "$WORK/wrk.txt") || true
        non2xx=$(awk '/Non-2xx/{print $NF}' "$WORK/wrk.txt")
        printf "%-8s %10s %8s %8s %8s %8s %10s\n" "$mode" "$req" "${co:-0}" "${rd:-0}" "${wr:-0}" "${to:-0}" "${non2xx:-0}"
        pkill -f "run --config $WORK/graygate.toml" || true
        while pgrep -f "run --config $WORK/graygate.toml" >/dev/null; do sleep 0.05; done
    done
done
