#!/usr/bin/env bash
# Memory after connection bursts: graygate's RSS before, during and after rounds of ten thousand
# client connections, for one or more graygate builds measured in the same interleaved rounds.
#
#   bench/bursts.sh                                   # the worktree's release build
#   bench/bursts.sh system=/tmp/gg-sys jemalloc=/tmp/gg-je mimalloc=/tmp/gg-mi
#
# Each NAME=BINARY is a graygate build (e.g. one per allocator). The script starts one nginx
# backend (one worker, loopback, a 5-byte body), imports one million identities into an embedded
# store (as bench/run.sh does, so the start RSS is comparable), starts every build twice: with
# bench/embedded-1m.toml's setup ("1M") and with a small config without a store lookup ("small"),
# each on its own port and its own copy of the store, one worker thread each. Then ROUNDS times,
# round-robin over the graygates (so that the noise of this shared machine hits them all alike),
# one `wrk -t2 -c$CONNS -d$DUR` burst at one graygate. RSS (VmRSS) is sampled before the first
# round, after each round, and IDLE seconds after a graygate's last round; the peak RSS and the
# peak number of open file descriptors are sampled every 0.2 s during its bursts. Finally, on each
# graygate, gdb calls glibc's `malloc_stats()` (its report goes to the graygate's log) and
# `malloc_trim(0)`, and the RSS after the trim is taken: what a trim gives back was held by glibc's
# malloc, free but not returned to the system. With jemalloc or mimalloc as the allocator, glibc's
# malloc holds next to nothing and the trim changes nothing.
#
# Env: ROUNDS (8), CONNS (10000), DUR (5s), IDLE (10 seconds), CONFIGS ("1M small"),
#      WORK (/tmp/graygate-bursts). Needs nginx, wrk, gdb, python3; the hard limit of open files
#      must allow CONNS client connections plus as many upstream connections (checked).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-8}
CONNS=${CONNS:-10000}
DUR=${DUR:-5s}
IDLE=${IDLE:-10}
CONFIGS=${CONFIGS:-1M small}
WORK=${WORK:-/tmp/graygate-bursts}
cd "$ROOT"

for c in nginx wrk gdb python3; do
    command -v "$c" >/dev/null 2>&1 || { echo "bursts.sh: $c is not installed" >&2; exit 1; }
done

# Every client connection is a descriptor, and so is every upstream connection open at the same
# time: up to 2 x CONNS at the worst moment. wrk, nginx and graygate are separate processes, each
# with its own limit of this size. Too few for the clients alone is refused; too few for the worst
# moment is said, and the table's "peak fds" and "accept failed" columns show whether it came.
need_fds=$(( 2 * CONNS + 100 ))
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] && hard=$need_fds
if [ "$hard" -lt $(( CONNS + 100 )) ]; then
    echo "bursts.sh: CONNS=$CONNS needs at least $(( CONNS + 100 )) open files per process; the hard limit (ulimit -Hn) is $hard" >&2
    exit 1
fi
if [ "$hard" -lt "$need_fds" ]; then
    echo "bursts.sh: note: the hard limit of open files ($hard) is below 2 x CONNS + 100 ($need_fds):" \
        "graygate may run out at the busiest moment (see the peak fds and accept failed columns)" >&2
    need_fds=$hard
fi
ulimit -n "$hard"

builds=()
if [ $# -eq 0 ]; then
    cargo build --release --quiet
    builds=("current=${CARGO_TARGET_DIR:-$ROOT/target}/release/graygate")
else
    builds=("$@")
fi
for b in "${builds[@]}"; do
    [[ $b == *=* ]] || { echo "bursts.sh: '$b' is not NAME=BINARY" >&2; exit 1; }
    [ -x "${b#*=}" ] || { echo "bursts.sh: ${b#*=} (for ${b%%=*}) is not an executable" >&2; exit 1; }
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$WORK/nginx/nginx.pid" ] && kill "$(cat "$WORK/nginx/nginx.pid")" 2>/dev/null || true
}
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK/nginx/tmp"

# The backend: one nginx worker, room for every upstream connection graygate may open.
BACKEND=$(free_port)
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $need_fds;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections $(( need_fds - 50 )); }
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx/tmp;
    proxy_temp_path $WORK/nginx/tmp;
    fastcgi_temp_path $WORK/nginx/tmp;
    uwsgi_temp_path $WORK/nginx/tmp;
    scgi_temp_path $WORK/nginx/tmp;
    server { listen 127.0.0.1:$BACKEND backlog=4096; location / { return 200 "hello"; } }
}
EOF
nginx -p "$WORK/nginx/" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$BACKEND) 2>/dev/null && break; sleep 0.1; done

# One million identities in an embedded store, imported once (by the first build) and copied for
# every graygate, since an embedded store is held by one process.
first_bin=${builds[0]#*=}
if [[ " $CONFIGS " == *" 1M "* ]]; then
    python3 - "$WORK/ids.txt" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write("10.0.0.7 1\n")
    n = 1
    i = 0
    while n < 1_000_000:
        i += 1
        a, b, c = (i >> 16) & 255, (i >> 8) & 255, i & 255
        ip = f"10.{a}.{b}.{c}" if a < 255 else f"11.{a}.{b}.{c}"
        if ip == "10.0.0.7":
            continue
        f.write(f"{ip} {i % 2}\n")
        n += 1
PY
    sed -e "s|/tmp/graygate-bench/embedded-1m|$WORK/store-1m|" bench/embedded-1m.toml >"$WORK/import.toml"
    "$first_bin" import --config "$WORK/import.toml" --list gray_ips "$WORK/ids.txt" >"$WORK/import.log" 2>&1 \
        || { echo "bursts.sh: import failed:"; cat "$WORK/import.log"; exit 1; }
fi

# config NAME KIND PORT -> writes $WORK/NAME.toml: bench/embedded-1m.toml with this run's port,
# backend and store copy ("1M"), or the same without the lookup rule and with an empty store.
config() {
    local name=$1 kind=$2 port=$3 out=$WORK/$1.toml
    sed -e "s|127.0.0.1:18203|127.0.0.1:$port|" -e "s|127.0.0.1:18080|127.0.0.1:$BACKEND|" \
        -e "s|127.0.0.1:19090|127.0.0.1:$BACKEND|" -e "s|/tmp/graygate-bench/embedded-1m|$WORK/store-$name|" \
        bench/embedded-1m.toml >"$out"
    if [ "$kind" = 1M ]; then
        cp -r "$WORK/store-1m" "$WORK/store-$name"
    else
        python3 - "$out" <<'PY'
import sys
p = sys.argv[1]
s = open(p).read()
i = s.find("[[policy.services.rules]]")
open(p, "w").write(s[:i] if i >= 0 else s)
PY
    fi
}

# Every graygate: NAME=BUILD/CONFIG, its pid and port.
names=() gpid=() gport=()
for kind in $CONFIGS; do
    for b in "${builds[@]}"; do
        name="${b%%=*}-$kind"
        port=$(free_port)
        config "$name" "$kind" "$port"
        "${b#*=}" run --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
        pid=$!; pids+=("$pid")
        up=0
        for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && { up=1; break; }; sleep 0.1; done
        [ $up = 1 ] || { echo "bursts.sh: $name did not start:"; cat "$WORK/$name.log"; exit 1; }
        got=$(curl -s -m 3 -H 'X-Real-IP: 10.0.0.7' "http://127.0.0.1:$port/")
        [ "$got" = hello ] || { echo "bursts.sh: $name answered '$got', not the backend's hello"; exit 1; }
        names+=("$name"); gpid+=("$pid"); gport+=("$port")
    done
done

rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
declare -A start peak fds after last_end idle trimmed errors
for i in "${!names[@]}"; do start[$i]=$(rss "${gpid[$i]}"); peak[$i]=${start[$i]}; fds[$i]=0; errors[$i]=0; done

# glibc's own account before the first burst (to the graygate's log, read at the end)
for i in "${!names[@]}"; do
    gdb -p "${gpid[$i]}" -batch -ex 'call (void)malloc_stats()' >"$WORK/${names[$i]}.gdb0" 2>&1 || true
done

uptime_before=$(uptime)
for r in $(seq "$ROUNDS"); do
    for i in "${!names[@]}"; do
        pid=${gpid[$i]}
        # peak RSS and open descriptors while this graygate takes its burst
        touch "$WORK/burst"; echo "0 0" >"$WORK/peak"
        ( p=0 f=0
          while [ -e "$WORK/burst" ]; do
              x=$(rss "$pid"); y=$(ls "/proc/$pid/fd" | wc -l)
              (( x > p )) && p=$x; (( y > f )) && f=$y
              echo "$p $f" >"$WORK/peak.tmp"; mv "$WORK/peak.tmp" "$WORK/peak"
              sleep 0.2
          done ) &
        sampler=$!
        timeout 60 wrk -t2 -c"$CONNS" -d"$DUR" --timeout 5s -H 'X-Real-IP: 10.0.0.7' \
            "http://127.0.0.1:${gport[$i]}/" >"$WORK/${names[$i]}.wrk.$r" 2>&1 || true
        rm -f "$WORK/burst"; wait "$sampler" 2>/dev/null || true
        read -r p f <"$WORK/peak"
        (( p > ${peak[$i]} )) && peak[$i]=$p
        (( f > ${fds[$i]} )) && fds[$i]=$f
        after[$i]="${after[$i]:-} $(( $(rss "$pid") / 1024 ))"
        last_end[$i]=$(date +%s)
        # wrk's socket errors and non-2xx answers, summed over the rounds
        e=$(python3 - "$WORK/${names[$i]}.wrk.$r" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
n = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
print(n + (int(m.group(1)) if m else 0))
PY
)
        errors[$i]=$(( ${errors[$i]} + e ))
        reqs=$(grep -Eo '^ +[0-9]+ requests' "$WORK/${names[$i]}.wrk.$r" | tr -dc 0-9)
        echo "round $r ${names[$i]}: ${reqs:-0} requests, $e errors, RSS $(( $(rss "$pid") / 1024 )) MiB" >&2
    done
done
uptime_after=$(uptime)

# IDLE seconds after each graygate's own last round; then malloc_stats and malloc_trim via gdb.
for i in "${!names[@]}"; do
    wait_s=$(( ${last_end[$i]} + IDLE - $(date +%s) ))
    (( wait_s > 0 )) && sleep "$wait_s"
    idle[$i]=$(rss "${gpid[$i]}")
done
for i in "${!names[@]}"; do
    gdb -p "${gpid[$i]}" -batch -ex 'call (void)malloc_stats()' -ex 'call (int)malloc_trim(0)' >"$WORK/${names[$i]}.gdb" 2>&1 || true
    trimmed[$i]=$(rss "${gpid[$i]}")
done

mib() { awk -v k="$1" 'BEGIN{printf "%.0f", k/1024}'; }
echo
echo "Bursts: $ROUNDS rounds of wrk -t2 -c$CONNS -d$DUR per graygate, round-robin; RSS in MiB"
echo "load before: ${uptime_before#*load average: }   after: ${uptime_after#*load average: }"
printf '%-22s %6s %6s %-40s %8s %8s %9s %13s %7s\n' graygate start peak "after each round" "idle ${IDLE}s" trimmed "peak fds" "accept failed" errors
for i in "${!names[@]}"; do
    printf '%-22s %6s %6s %-40s %8s %8s %9s %13s %7s\n' "${names[$i]}" "$(mib "${start[$i]}")" "$(mib "${peak[$i]}")" \
        "${after[$i]# }" "$(mib "${idle[$i]}")" "$(mib "${trimmed[$i]}")" "${fds[$i]}" \
        "$(grep -c 'accept failed' "$WORK/${names[$i]}.log" || true)" "${errors[$i]}"
done
echo
echo "glibc malloc_stats() before the first and after the last burst (system = taken from the OS,"
echo "in use = live allocations; a graygate on jemalloc or mimalloc allocates next to nothing there):"
for i in "${!names[@]}"; do
    python3 - "${names[$i]}" "$WORK/${names[$i]}.log" <<'PY'
import re, sys
name, log = sys.argv[1], open(sys.argv[2]).read()
t = re.findall(r"Total \(incl. mmap\):\s*system bytes\s*=\s*(\d+)\s*in use bytes\s*=\s*(\d+)", log)
f = lambda m: f"system {int(m[0])/2**20:6.1f} MiB, in use {int(m[1])/2**20:6.1f} MiB"
print(f"  {name:22} " + (f"before: {f(t[0])}; after: {f(t[-1])}" if len(t) >= 2 else "(no report)"))
PY
done
