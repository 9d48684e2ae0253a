#!/usr/bin/env bash
# Throughput of several graygate builds (e.g. one per allocator) in the same interleaved wrk rounds,
# beside plain nginx proxy_pass, on the memcached IP-list layout of examples/peer-seed-000.toml.
#
#   bench/builds.sh system=/tmp/gg-sys jemalloc=/tmp/gg-je mimalloc=/tmp/gg-mi
#
# Starts ../shared/peer (its fixed ports: run it alone, like bench/run.sh), then every NAME=BINARY
# with one worker thread on its own port and its own policy store, checks that each sends the gray
# identity to the canary, and runs ../shared/peer/bench.sh over plain nginx and the builds.
# Env: passed to bench.sh (DUR, CONNS, THREADS, WARM, REPS; REPS defaults to 5 here).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEER=${PEER:-$ROOT/../shared/peer}
WORK=/tmp/graygate-builds
export REPS=${REPS:-5}
cd "$ROOT"
[ $# -gt 0 ] || { echo "usage: bench/builds.sh NAME=BINARY..." >&2; exit 2; }
for b in "$@"; do
    [[ $b == *=* ]] || { echo "builds.sh: '$b' is not NAME=BINARY" >&2; exit 2; }
    [ -x "${b#*=}" ] || { echo "builds.sh: ${b#*=} (for ${b%%=*}) is not an executable" >&2; exit 2; }
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; "$PEER/stop.sh" >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$PEER/start.sh" >/dev/null
rm -rf "$WORK"
mkdir -p "$WORK"

extra="" only=18003 port=18220
for b in "$@"; do
    name=${b%%=*} port=$((port + 1))
    sed -e "s/127.0.0.1:18201/127.0.0.1:$port/" -e "s|graygate-data/peer-seed-000|$WORK/$name-data|" \
        examples/peer-seed-000.toml >"$WORK/$name.toml"
    "${b#*=}" run --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
    pids+=($!)
    up=0
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && { up=1; break; }; sleep 0.1; done
    [ $up = 1 ] || { echo "builds.sh: $name did not start:"; cat "$WORK/$name.log"; exit 1; }
    got=$(curl -s -m 3 -H 'X-Real-IP: 10.0.0.7' "http://127.0.0.1:$port/")
    [ "$got" = canary ] || { echo "builds.sh: $name answered '$got' for the gray identity, not canary"; exit 1; }
    extra+="graygate $name|$port|X-Real-IP: 10.0.0.7"$'\n'
    only+=",$port"
done
echo "load before: $(uptime)"
TARGETS_EXTRA=$extra ONLY=$only "$PEER/bench.sh"
echo "load after: $(uptime)"
