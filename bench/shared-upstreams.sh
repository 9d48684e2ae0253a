#!/usr/bin/env bash
# How long a runtime change of a shared upstream takes to run on another instance: two graygate
# instances on one redis-server, each with its own config; N times, a server's weight of the
# shared upstream `api` is changed through A's admin API, and B's running revision (GET
# /v1/status) is polled until it is the change's. Prints each delay and min / median / max.
# B's table is rebuilt (plan, install) in that time; `api` has no active health checks here, so
# no check round is waited for (with them, add one check of its new servers).
#
#   bench/shared-upstreams.sh [N]     (default 20; GRAYGATE=path/to/graygate, default target/release)
#   CHANGE=route bench/shared-upstreams.sh   the same with a change that leaves the upstreams
#                                            alone (a route's hosts): the baseline to compare with
#   DEBUG_TIMES=1                            also print when A answered the change
#
# The polling adds up to its own interval (about 2 ms plus a curl) to every figure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-20}
BIN=${GRAYGATE:-$ROOT/target/release/graygate}
[ -x "$BIN" ] || { echo "shared-upstreams.sh: build it first (cargo build --release) or set GRAYGATE" >&2; exit 2; }
WORK=$(mktemp -d /tmp/graygate-shared-upstreams.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

REDIS=$(free_port)
redis-server --port "$REDIS" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$REDIS" ping >/dev/null 2>&1 && break; sleep 0.05; done

start() { # name admin_port
    cat >"$WORK/$1.toml" <<EOF
listen = ["127.0.0.1:0"]
[store]
kind = "redis"
url = "redis://127.0.0.1:$REDIS/0"
[admin]
listen = "127.0.0.1:$2"
[[upstreams]]
name = "stable"
servers = ["127.0.0.1:9"]
[[policy.routes]]
service = "web"
[[policy.services]]
name = "web"
stable = "v1"
versions = { v1 = "api" }
[policy.upstreams.api]
servers = [{ address = "127.0.0.1:10" }, { address = "127.0.0.1:11" }]
EOF
    "$BIN" run --config "$WORK/$1.toml" >"$WORK/$1.out" 2>"$WORK/$1.log" &
    pids+=($!)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$2/readyz" >/dev/null && return; sleep 0.05; done
    echo "shared-upstreams.sh: $1 did not start:" >&2; cat "$WORK/$1.log" >&2; exit 1
}
A=$(free_port); start a "$A"
B=$(free_port); start b "$B"

now_us() { date +%s%6N; }
delays=()
for i in $(seq "$N"); do
    weight=$(( (i % 9) + 2 ))
    t0=$(now_us)
    if [ "${CHANGE:-upstream}" = upstream ]; then
        answer=$(curl -sf -X PATCH -H 'content-type: application/json' -d "{\"weight\":$weight}" \
            "http://127.0.0.1:$A/v1/upstreams/api/servers/127.0.0.1:10")
    else # the baseline: a change that leaves the upstreams alone (a route's hosts)
        answer=$(curl -sf -X PUT -H 'content-type: application/json' \
            -d "{\"service\":\"web\",\"hosts\":[\"h$i.example\"]}" "http://127.0.0.1:$A/v1/routes/other")
    fi
    rev=$(echo "$answer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])')
    t1=$(now_us)
    until [ "$(curl -sf "http://127.0.0.1:$B/v1/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])')" = "$rev" ]; do
        [ $(( $(now_us) - t0 )) -lt 10000000 ] || { echo "B never ran revision $rev" >&2; exit 1; }
        sleep 0.002
    done
    d=$(( $(now_us) - t0 ))
    [ -z "${DEBUG_TIMES:-}" ] || echo "  patch answered after $(( t1 - t0 )) us"
    delays+=("$d")
    printf 'revision %s: B runs it %.1f ms after A was asked\n' "$rev" "$(echo "$d / 1000" | bc -l)"
done
printf '%s\n' "${delays[@]}" | sort -n | awk '{a[NR]=$1} END {printf "n=%d min %.1f ms, median %.1f ms, max %.1f ms (change through A to running on B)\n", NR, a[1]/1000, a[int((NR+1)/2)]/1000, a[NR]/1000}'
