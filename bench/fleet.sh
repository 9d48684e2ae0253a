#!/usr/bin/env bash
# The fleet's figures (docs/benchmarks.md, "Fleet"): three graygate instances sharing one Redis.
#
#   bench/fleet.sh                # all three parts, about 2 minutes
#   bench/fleet.sh propagate      # or one part: propagate, failover, reseed
#
# - propagate: CHANGES weight changes (default 30) made through instance 1's admin API; for each,
#   the time from sending it until every instance reports its revision on /readyz (each polled on
#   a kept-alive connection about every millisecond).
# - failover: a Redis Sentinel set (primary, replica, three sentinels with down-after 1 s) under
#   wrk load through the three instances (3 x -t1 -c20, 20 s); 5 s in, the primary is killed with
#   SIGKILL. Reports wrk's failed requests (socket errors and non-2xx) and how long a change
#   through the admin API was refused.
# - reseed: Redis without persistence under the same load; it is killed and started again empty.
#   Reports the failed requests and the time from Redis answering again to the policy being back
#   in it at its revision.
# Env: BIN (default target/release/graygate, built when missing), CHANGES.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/graygate-fleet.XXXXXX)
PARTS=${1:-all}
CHANGES=${CHANGES:-30}
cd "$ROOT"
for c in nginx wrk curl redis-server redis-sentinel redis-cli python3; do
    command -v "$c" >/dev/null || { echo "needs $c"; exit 1; }
done
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN=$ROOT/target/release/graygate
fi

cleanup() {
    pkill -f "$WORK/" 2>/dev/null || true
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    sleep 0.2
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
STABLE=$(free_port) CANARY=$(free_port)
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon on;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$STABLE; location / { return 200 "stable\n"; } }
  server { listen 127.0.0.1:$CANARY; location / { return 200 "canary\n"; } }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log"

# Instance i's ports: GG_i (traffic), ADMIN_i.
declare -a GG ADMIN
for i in 1 2 3; do GG[$i]=$(free_port); ADMIN[$i]=$(free_port); done

# start_instances URL: three instances on the store at URL, each with its own directory.
start_instances() {
    local url=$1 i
    for i in 1 2 3; do
        mkdir -p "$WORK/gg$i"
        cat >"$WORK/gg$i/graygate.toml" <<EOF
listen = ["127.0.0.1:${GG[$i]}"]
workers = 1
[store]
kind = "redis"
url = "$url"
[admin]
listen = "127.0.0.1:${ADMIN[$i]}"
[[upstreams]]
name = "stable"
servers = ["127.0.0.1:$STABLE"]
[[upstreams]]
name = "canary"
servers = ["127.0.0.1:$CANARY"]
[policy]
[[policy.routes]]
service = "web"
[[policy.services]]
name = "web"
stable = "stable"
versions = { stable = "stable", canary = "canary" }
[policy.services.split]
weights = { canary = 0 }
EOF
        "$BIN" run --config "$WORK/gg$i/graygate.toml" >>"$WORK/gg$i/run.log" 2>&1 &
    done
    for i in 1 2 3; do
        for _ in $(seq 500); do curl -sf -o /dev/null "http://127.0.0.1:${ADMIN[$i]}/readyz" && break; sleep 0.01; done
        curl -sf -o /dev/null "http://127.0.0.1:${ADMIN[$i]}/readyz" || { echo "instance $i did not start:"; cat "$WORK/gg$i/run.log"; exit 1; }
    done
}
stop_instances() {
    pkill -f "run --config $WORK/gg" 2>/dev/null || true
    while pgrep -f "run --config $WORK/gg" >/dev/null; do sleep 0.05; done
}

# load SECONDS: wrk through each instance; leaves its outputs in $WORK/wrk-i.txt.
WRK_PIDS=()
load() {
    local i
    WRK_PIDS=()
    for i in 1 2 3; do
        wrk -t1 -c20 -d"$1"s "http://127.0.0.1:${GG[$i]}/" >"$WORK/wrk-$i.txt" 2>&1 &
        WRK_PIDS+=($!)
    done
}
# Waits for the load to end.
load_done() { wait "${WRK_PIDS[@]}"; }
# failed: requests, socket errors and non-2xx summed over the three wrk outputs.
failed() {
    awk '/requests in/{r+=$1} /Socket errors/{gsub(",", ""); e+=$4+$6+$8+$10} /Non-2xx/{n+=$NF} END{printf "%d requests, %d socket errors, %d non-2xx\n", r, e, n}' "$WORK"/wrk-?.txt
}

# Polls the admin APIs and times changes; see the parts below.
cat >"$WORK/probe.py" <<'EOF'
import http.client, json, sys, time

def conn(port):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=2)

def request(c, method, path, body=None):
    headers = {"Content-Type": "application/json"} if body is not None else {}
    c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    r = c.getresponse()
    return r.status, r.read()

def revision(c):
    status, body = request(c, "GET", "/readyz")
    try:
        return json.loads(body).get("revision", 0)
    except ValueError:
        return 0

def propagate(ports, changes):
    conns = [conn(p) for p in ports]
    times = []
    for n in range(changes):
        start = time.perf_counter()
        status, body = request(conns[0], "PUT", "/v1/services/web/weights",
                               {"weights": {"canary": (n % 2) * 10}})
        if status != 200:
            sys.exit(f"change {n}: {status} {body!r}")
        want = json.loads(body)["revision"]
        pending = list(range(len(conns)))
        deadline = start + 10
        while pending and time.perf_counter() < deadline:
            pending = [i for i in pending if revision(conns[i]) < want]
            if pending:
                time.sleep(0.0005)
        if pending:
            sys.exit(f"change {n} (revision {want}) did not reach instances {pending} in 10 s")
        times.append((time.perf_counter() - start) * 1000)
        time.sleep(0.05)
    times.sort()
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))]
    print(f"change -> all {len(ports)} instances, {changes} changes: median {q(0.5):.1f} ms, p90 {q(0.9):.1f} ms, max {times[-1]:.1f} ms")

def refused(port, seconds):
    """Makes a change every 50 ms for `seconds`; prints how long changes were refused."""
    c = conn(port)
    first = last = None
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
        try:
            status, _ = request(c, "PUT", "/v1/services/web/weights", {"weights": {"canary": n % 2}})
        except Exception:
            status = 0
            c = conn(port)
        now = time.perf_counter()
        if status != 200:
            first = first or now
            last = now
        time.sleep(0.05)
    if first is None:
        print("changes refused: none")
    else:
        print(f"changes refused for {(last - first) * 1000:.0f} ms")

if sys.argv[1] == "propagate":
    propagate([int(p) for p in sys.argv[3:]], int(sys.argv[2]))
elif sys.argv[1] == "refused":
    refused(int(sys.argv[2]), float(sys.argv[3]))
EOF

part_propagate() {
    echo "== propagate: a change to all three instances (one Redis)"
    local port; port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" --daemonize yes --pidfile "$WORK/redis-p.pid" --logfile "$WORK/redis-p.log"
    start_instances "redis://127.0.0.1:$port"
    python3 "$WORK/probe.py" propagate "$CHANGES" "${ADMIN[1]}" "${ADMIN[2]}" "${ADMIN[3]}"
    stop_instances
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
}

part_failover() {
    echo "== failover: the Sentinel primary killed under load"
    local primary replica s1 s2 s3 i
    primary=$(free_port) replica=$(free_port) s1=$(free_port) s2=$(free_port) s3=$(free_port)
    mkdir -p "$WORK/primary" "$WORK/replica"
    redis-server --port "$primary" --bind 127.0.0.1 --dir "$WORK/primary" --daemonize yes --pidfile "$WORK/primary/pid" --logfile "$WORK/primary/log"
    redis-server --port "$replica" --bind 127.0.0.1 --dir "$WORK/replica" --daemonize yes --pidfile "$WORK/replica/pid" --logfile "$WORK/replica/log" --replicaof 127.0.0.1 "$primary"
    for s in $s1 $s2 $s3; do
        mkdir -p "$WORK/s$s"
        cat >"$WORK/s$s/sentinel.conf" <<EOF
port $s
bind 127.0.0.1
dir $WORK/s$s
sentinel monitor graygate 127.0.0.1 $primary 2
sentinel down-after-milliseconds graygate 1000
sentinel failover-timeout graygate 5000
EOF
        redis-sentinel "$WORK/s$s/sentinel.conf" --daemonize yes --logfile "$WORK/s$s/log" --pidfile "$WORK/s$s/pid"
    done
    sleep 2
    start_instances "redis+sentinel://127.0.0.1:$s1,127.0.0.1:$s2,127.0.0.1:$s3/graygate"
    load 20
    sleep 5
    kill -9 "$(cat "$WORK/primary/pid")"
    python3 "$WORK/probe.py" refused "${ADMIN[1]}" 14
    load_done
    failed
    redis-cli -p "$s1" sentinel get-master-addr-by-name graygate | paste -sd: | sed 's/^/primary now: /'
    stop_instances
    for s in $s1 $s2 $s3 $replica; do redis-cli -p "$s" shutdown nosave >/dev/null 2>&1 || true; done
}

part_reseed() {
    echo "== reseed: Redis restarted empty under load"
    local port; port=$(free_port)
    local start_redis="redis-server --port $port --bind 127.0.0.1 --save '' --appendonly no --dir $WORK --daemonize yes --pidfile $WORK/redis-r.pid --logfile $WORK/redis-r.log"
    eval "$start_redis"
    start_instances "redis://127.0.0.1:$port"
    # A few runtime changes, so that the revision is not the seed's.
    for n in 1 2 3 4 5; do graygate_ctl weights set -s web "canary=$n" >/dev/null; done
    local want; want=$(redis-cli -p "$port" hget graygate:policy revision)
    load 12
    sleep 3
    kill -9 "$(cat "$WORK/redis-r.pid")"
    sleep 2
    eval "$start_redis"
    until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.001; done
    local t0; t0=$(date +%s%N)
    until [ "$(redis-cli -p "$port" hget graygate:policy revision)" = "$want" ]; do sleep 0.001; done
    local t1; t1=$(date +%s%N)
    echo "re-seeded at revision $want $(( (t1 - t0) / 1000000 )) ms after Redis answered again"
    load_done
    failed
    stop_instances
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
}
graygate_ctl() { "$BIN" ctl --addr "http://127.0.0.1:${ADMIN[1]}" "$@"; }

case $PARTS in
    all) part_propagate; part_failover; part_reseed ;;
    propagate) part_propagate ;;
    failover) part_failover ;;
    reseed) part_reseed ;;
    *) echo "unknown part $PARTS (propagate, failover, reseed)"; exit 2 ;;
esac
