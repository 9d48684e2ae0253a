#!/usr/bin/env bash
# What a mirror costs the primary: graygate (release, one worker) in front of a one-worker nginx
# backend, without a mirror and with 100% of GETs copied to a target that accepts and never
# answers (max_in_flight = 100, timeout = 2s), in interleaved wrk rounds.
#
#   bench/mirror.sh         # ~2 minutes; prints one line per round and the mirror's counters
#
# Env: ROUNDS (3), DUR (10s), CONNS (50).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=/tmp/graygate-bench-mirror
ROUNDS=${ROUNDS:-3} DUR=${DUR:-10s} CONNS=${CONNS:-50}
cd "$ROOT"
cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/graygate
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"

cat > nginx.conf <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000;
    server { listen 127.0.0.1:28080 backlog=4096; location / { return 200 "prod\n"; } }
}
CONF
cat > hang.py <<'PY'
# Accepts connections and never answers, for at most 15 minutes.
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 29999)); s.listen(4096); s.settimeout(1)
held, deadline = [], time.time() + 900
while time.time() < deadline:
    try:
        held.append(s.accept()[0])
    except socket.timeout:
        pass
PY
for m in off on; do
    cat > gg-$m.toml <<CONF
listen = ["127.0.0.1:28100"]
workers = 1
[store]
kind = "embedded"
path = "$WORK/data-$m"
[metrics]
listen = "127.0.0.1:28101"
[[upstreams]]
name = "prod"
servers = ["127.0.0.1:28080"]
[[upstreams]]
name = "hang"
servers = ["127.0.0.1:29999"]
[policy]
[[policy.routes]]
service = "web"
[[policy.services]]
name = "web"
stable = "v1"
versions = { v1 = "prod", shadow = "hang" }
CONF
done
echo 'mirror = { version = "shadow", percent = 100, max_in_flight = 100, timeout = "2s" }' >> gg-on.toml

nginx -c "$WORK/nginx.conf"
python3 hang.py & HANG=$!
trap 'kill $HANG 2>/dev/null || true; kill $(cat "$WORK/nginx.pid") 2>/dev/null || true' EXIT
for round in $(seq "$ROUNDS"); do
    for m in off on; do
        rm -rf "data-$m"
        "$BIN" run --config "gg-$m.toml" > "gg-$m.log" 2>&1 & GG=$!
        for _ in $(seq 50); do curl -s -o /dev/null 127.0.0.1:28100/ && break; sleep 0.1; done
        wrk -t1 -c"$CONNS" -d"$DUR" --latency http://127.0.0.1:28100/ > "wrk-$m-$round.txt"
        echo "round $round mirror $m: $(grep -E 'Requests/sec' "wrk-$m-$round.txt" | tr -s ' ') p50 $(awk '$1=="50%"{print $2}' "wrk-$m-$round.txt") p99 $(awk '$1=="99%"{print $2}' "wrk-$m-$round.txt")"
        curl -s 127.0.0.1:28101/metrics | grep -E '^graygate_mirror_(in_flight|skipped_total)' | sed 's/^/    /' || true
        kill $GG; wait $GG 2>/dev/null || true
    done
done
