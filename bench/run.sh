#!/usr/bin/env bash
# graygate side by side with the original designs, in the same interleaved wrk rounds.
#
#   bench/run.sh            # ~6 minutes; writes docs/benchmarks.md
#
# Builds graygate in release mode, starts ../shared/peer (nginx + lua + memcached, OpenResty +
# Redis, their keepalive-tuned variants, plain nginx proxy_pass, the backends), starts graygate with
# examples/peer-seed-000.toml (memcached IP list), examples/peer-seed-001.toml (Redis user range)
# and bench/embedded-1m.toml (IP list of one million identities in the embedded store), each with
# one worker thread as the peers run one nginx worker, runs ../shared/peer/bench.sh over all of
# them, samples graygate's RSS, runs the policy micro-benchmarks, and writes docs/benchmarks.md.
# Two workers in the same rounds: plain nginx proxy_pass with `worker_processes 2` (port 18023,
# its conf made from the peers' plain.conf) and the three graygate configs with `workers = 2`
# (ports 18221-18223), for the scaling table (1 -> 2 workers).
# Env: passed to bench.sh (DUR, CONNS, THREADS, WARM, REPS); SKIP_MICRO=1 skips criterion.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEER=${PEER:-$ROOT/../shared/peer}
OUT=${OUT:-$ROOT/docs/benchmarks.md}
WORK=/tmp/graygate-bench
cd "$ROOT"

need=()
for c in nginx:nginx wrk:wrk redis-server:redis-server memcached:memcached curl:curl; do
    command -v "${c%%:*}" >/dev/null 2>&1 || need+=("${c##*:}")
done
# The peers' lua module and the libraries their scripts load, each checked (the module alone
# does not bring them).
for p in libnginx-mod-http-lua lua-nginx-redis lua-nginx-memcached lua-cjson; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release --quiet
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/graygate

# A graygate or nginx left running on one of this script's ports would be measured instead of the
# one started here (start() only waits for the port to answer): refuse to run beside it (before
# the exit trap, which would stop the peers someone else started).
for p in 18201 18202 18203 18211 18221 18222 18223 18023; do
    if (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null; then
        echo "port $p is taken (a graygate or a bench left running?): stop it first"; exit 1
    fi
done
pids=()
NGINX2=$WORK/nginx2
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -s "$NGINX2/logs/nginx.pid" ] && kill "$(cat "$NGINX2/logs/nginx.pid")" 2>/dev/null || true
    "$PEER/stop.sh" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$PEER/start.sh" >/dev/null
rm -rf "$WORK" "$ROOT/examples/graygate-data"
mkdir -p "$WORK"

# One million identities (10.0.0.7 among them, flagged 1; the rest 0 or 1), imported while no
# graygate holds the store.
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
"$BIN" import --config bench/embedded-1m.toml --list gray_ips "$WORK/ids.txt" >"$WORK/import.log" 2>&1
cp -r /tmp/graygate-bench/embedded-1m /tmp/graygate-bench/embedded-1m-w2

start() {  # start CONFIG PORT -> pid
    "$BIN" run --config "$1" >"$WORK/$2.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$2) 2>/dev/null && return; sleep 0.1; done
    echo "graygate on :$2 did not start:"; cat "$WORK/$2.log"; exit 1
}
start examples/peer-seed-000.toml 18201; PID_A=${pids[-1]}
start examples/peer-seed-001.toml 18202; PID_B=${pids[-1]}
start bench/embedded-1m.toml 18203; PID_E=${pids[-1]}

# Two workers: the same three configs with `workers = 2`, each on its own port and store (the
# embedded one a copy of the imported million, made above while no graygate held it)...
two_workers() {  # two_workers CONFIG PORT STORE_FROM STORE_TO -> $WORK/w2-PORT.toml
    sed -e "s/127.0.0.1:1820\([0-9]\)/127.0.0.1:1822\1/" -e 's/^workers = 1$/workers = 2/' \
        -e "s|$3|$4|" "$1" >"$WORK/w2-$2.toml"
    grep -q '^workers = 2$' "$WORK/w2-$2.toml" || { echo "$1: no 'workers = 1' line to change"; exit 1; }
}
two_workers examples/peer-seed-000.toml 18221 graygate-data/peer-seed-000 /tmp/graygate-bench/w2-seed-000
two_workers examples/peer-seed-001.toml 18222 NONE NONE
two_workers bench/embedded-1m.toml 18223 /tmp/graygate-bench/embedded-1m /tmp/graygate-bench/embedded-1m-w2
start "$WORK/w2-18221.toml" 18221
start "$WORK/w2-18222.toml" 18222
start "$WORK/w2-18223.toml" 18223
# ...and plain nginx proxy_pass with `worker_processes 2`: the peers' plain.conf and its includes,
# rendered as start.sh renders them, with two workers and port 18023 (../shared is left as it is).
mkdir -p "$NGINX2/conf" "$NGINX2/logs" "$NGINX2/tmp"
for f in main.inc http.inc plain.conf; do sed "s|@PEER@|$PEER|g" "$PEER/conf/$f" >"$NGINX2/conf/$f"; done
sed -i 's/^worker_processes 1;/worker_processes 2;/' "$NGINX2/conf/main.inc"
sed -i 's/127.0.0.1:18003/127.0.0.1:18023/' "$NGINX2/conf/plain.conf"
grep -q '^worker_processes 2;' "$NGINX2/conf/main.inc" && grep -q '127.0.0.1:18023' "$NGINX2/conf/plain.conf" \
    || { echo "cannot make the two-worker nginx conf from $PEER/conf"; exit 1; }
nginx -p "$NGINX2/" -c "$NGINX2/conf/plain.conf" -e logs/error.log
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/18023) 2>/dev/null && break; sleep 0.1; done
[ "$(curl -s -m 3 http://127.0.0.1:18023/)" = prod ] || { echo "nginx x2 on :18023 does not proxy"; exit 1; }

# Optional: an earlier build of graygate in the same rounds (BEFORE_BIN=path), for a before/after
# of a change, on the memcached layout at port 18211.
extra_before=""
if [ -n "${BEFORE_BIN:-}" ]; then
    # An earlier build may not know `key_escape`; the benchmark's IPv4 keys read the same without it.
    sed -e 's/127.0.0.1:18201/127.0.0.1:18211/' -e 's|graygate-data/peer-seed-000|/tmp/graygate-bench/before|' \
        -e '/^key_escape/d' examples/peer-seed-000.toml >"$WORK/before.toml"
    BIN_SAVED=$BIN; BIN=$BEFORE_BIN; start "$WORK/before.toml" 18211; BIN=$BIN_SAVED
    extra_before=$'\ngraygate BEFORE (memc)|18211|X-Real-IP: 10.0.0.7'
fi

# Routing check before measuring: each graygate target sends the gray identity to the canary.
for t in "18201 X-Real-IP: 10.0.0.7" "18202 TOKEN: abc" "18203 X-Real-IP: 10.0.0.7" \
         "18221 X-Real-IP: 10.0.0.7" "18222 TOKEN: abc" "18223 X-Real-IP: 10.0.0.7"; do
    set -- $t; got=$(curl -s -m 3 -H "${*:2}" "http://127.0.0.1:$1/")
    [ "$got" = canary ] || { echo "graygate :$1 answered '$got' for ${*:2}, not canary"; exit 1; }
done

rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
# Idle means settled: loading the million identities frees what it built them with, and jemalloc
# returns freed pages to the system within its 10 s decay (the RSS of the embedded target falls
# from about 280 to about 167 MiB in that time).
sleep 12
idle_a=$(rss $PID_A) idle_b=$(rss $PID_B) idle_e=$(rss $PID_E)

peak="$WORK/peak"; echo "0 0 0" >"$peak"
( while sleep 0.5; do
    read -r pa pb pe <"$peak"
    a=$(rss $PID_A) b=$(rss $PID_B) e=$(rss $PID_E)
    echo "$(( a > pa ? a : pa )) $(( b > pb ? b : pb )) $(( e > pe ? e : pe ))" >"$peak"
  done ) &
sampler=$!; pids+=($sampler)

two=$'\nplain nginx proxy x2|18023|\ngraygate seed-000 x2|18221|X-Real-IP: 10.0.0.7\ngraygate seed-001 x2|18222|TOKEN: abc\ngraygate embedded x2|18223|X-Real-IP: 10.0.0.7'
TARGETS_EXTRA=$'graygate seed-000 (memc)|18201|X-Real-IP: 10.0.0.7\ngraygate seed-001 (redis)|18202|TOKEN: abc\ngraygate embedded 1M|18203|X-Real-IP: 10.0.0.7'"$two$extra_before" \
    "$PEER/bench.sh" | tee "$WORK/table.txt"
kill $sampler 2>/dev/null || true
read -r peak_a peak_b peak_e <"$peak"

# HTTPS, HTTP/2 and the memory per idle connection, each by its own script with its own nginx and
# backend on other ports (184xx), while the peers idle; SKIP_EXTRA=1 skips them.
: >"$WORK/tls.txt"; : >"$WORK/idle-conns.txt"
if [ "${SKIP_EXTRA:-0}" != 1 ]; then
    OUT=- SKIP_BUILD=1 REPS="${REPS:-3}" bash "$ROOT/bench/tls.sh" 2>&1 | tee "$WORK/tls.txt"
    BIN="$BIN" bash "$ROOT/bench/idle-conns.sh" 2>&1 | tee "$WORK/idle-conns.txt"
fi

micro="(skipped)"
if [ "${SKIP_MICRO:-0}" != 1 ]; then
    cargo bench --quiet --bench policy -- --noplot 2>/dev/null | grep -E "^[a-z_0-9/]+ +time:|^[a-z_0-9/]+$|time:" >"$WORK/micro.txt" || true
    micro=$(cat "$WORK/micro.txt")
fi

python3 - "$WORK/table.txt" "$OUT" "$idle_a" "$idle_b" "$idle_e" "$peak_a" "$peak_b" "$peak_e" "$WORK/micro.txt" "$(nproc)" <<'PY'
import sys, re, datetime, os
table, out = sys.argv[1], sys.argv[2]
idle_a, idle_b, idle_e, peak_a, peak_b, peak_e = (int(x) for x in sys.argv[3:9])
micro_path, cores = sys.argv[9], sys.argv[10]
rows = {}
lines = open(table).read().splitlines()
for line in lines:
    m = re.match(r"^(.+?)\s+(\d{4,5})\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s+\[(.*)\]$", line)
    if m:
        rows[m.group(2)] = dict(name=m.group(1).strip(), rps=int(m.group(3)), p50=float(m.group(4)),
                                p99=float(m.group(5)), errors=int(m.group(6)), runs=m.group(7))
def ratio(a, b):
    return rows[a]["rps"] / rows[b]["rps"] if a in rows and b in rows and rows[b]["rps"] else float("nan")
def missing(*ports):
    return [p for p in ports if p not in rows]
def line(gg, peer, target):
    if missing(gg, peer):
        return f"| {' / '.join(missing(gg, peer))} | (not run: ONLY) | {target}x | |"
    r = ratio(gg, peer)
    ok = "met" if r >= target else "NOT met"
    return f"| {rows[gg]['name']} / {rows[peer]['name']} | {r:.2f}x | {target}x | {ok} |"
def scaling(one, two):
    if one not in rows or two not in rows:
        return f"| {rows.get(one, {}).get('name', one)} | (not run) | | |"
    a, b = rows[one]["rps"], rows[two]["rps"]
    return f"| {rows[one]['name']} | {a} | {b} | {b / a if a else float('nan'):.2f}x |"
def p99(gg, peer):
    if missing(gg, peer):
        return f"| {' / '.join(missing(gg, peer))} | (not run: ONLY) | | |"
    a, b = rows[gg]["p99"], rows[peer]["p99"]
    return f"| {rows[gg]['name']} | {a:.2f} ms | {rows[peer]['name']} {b:.2f} ms | {'met' if a <= b else 'NOT met'} |"
micro = open(micro_path).read().strip() if os.path.exists(micro_path) else "(skipped)"
work = os.path.dirname(micro_path)
tls_text = open(os.path.join(work, "tls.txt")).read() if os.path.exists(os.path.join(work, "tls.txt")) else ""
tls_rows = {}
for l in tls_text.splitlines():
    m = re.match(r"^(.+?)\s{2,}(nginx-nores|nginx-tls12|nginx|graygate)\s+(\d+)\s+(\d+)\s", l)
    if m:
        tls_rows[(m.group(1).strip(), m.group(2))] = int(m.group(4))
tls_lines = []
for test in dict.fromkeys(t for t, _ in tls_rows):
    g, n = tls_rows.get((test, "graygate")), tls_rows.get((test, "nginx"))
    if g and n:
        tls_lines.append(f"| {test} | {g} | {n} | {g/n:.2f}x | {'met' if g >= n else 'NOT met'} |")
tls_table = [l for l in tls_text.splitlines() if re.match(r"^(test |HTTPS|new TLS|HTTP/2)", l)]
tls_section = "" if not tls_text.strip() else f"""## HTTPS and HTTP/2 (`bench/tls.sh`, same run)

One worker each, one self-signed ECDSA P-256 certificate served by both, the same backend behind
both, both speaking TLS 1.3 (see `bench/tls.sh` for the exact commands). Target: graygate at
least nginx's req/s. `nginx-nores` (no session resumption) and `nginx-tls12` (this nginx 1.22's
own default protocols, TLS 1.2 at most, whose resumed sessions need no key exchange) are for
reference.

```
{chr(10).join(tls_table)}
```

| test | graygate req/s | nginx req/s | graygate / nginx | target 1.0x |
|---|---|---|---|---|
{chr(10).join(tls_lines)}
"""
idle_text = open(os.path.join(work, "idle-conns.txt")).read() if os.path.exists(os.path.join(work, "idle-conns.txt")) else ""
idle_table = [l for l in idle_text.splitlines() if re.match(r"^(target |nginx |graygate|before|RSS in)", l)]
idle_section = "" if not idle_text.strip() else f"""## Memory per idle kept-alive connection (`bench/idle-conns.sh`, same run)

10,000 client connections held open and idle after one keep-alive request each, then closed.
Targets: graygate's bytes per idle connection at most 1.5x nginx's worker's; RSS after the burst
closes within 10% of the start.

```
{chr(10).join(idle_table)}
```
"""
before_after = ""
if "18211" in rows and not missing("18201", "18003"):
    b, a, n = rows["18211"], rows["18201"], rows["18003"]
    pairs = zip(a["runs"].split(), b["runs"].split())
    rounds = ", ".join(f"{int(x)/int(y):.2f}x" for x, y in pairs if int(y))
    before_after = f"""## Before / after (same run)

An earlier build (`BEFORE_BIN`) on the memcached layout, in the same rounds:

| build | req/s | / plain nginx | p99 |
|---|---|---|---|
| before | {b['rps']} | {b['rps']/n['rps']:.2f}x | {b['p99']:.2f} ms |
| after | {a['rps']} | {a['rps']/n['rps']:.2f}x | {a['p99']:.2f} ms |
| after / before | {a['rps']/b['rps']:.2f}x | | |

Round by round (both builds measured in the same interleaved round): {rounds}. A median over three
rounds moves by more than a tenth on this shared machine; the rounds show how far.
"""
doc = f"""# Benchmarks

Produced by `bench/run.sh` on {datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M')} UTC, on this
project's machine ({cores} cores). Every figure below comes from that one run: the ratios compare
targets measured in the same interleaved rounds of `../shared/peer/bench.sh`.

Equal cores: every nginx runs one worker, and every graygate runs one worker thread (`workers = 1`
in `examples/peer-seed-*.toml` and `bench/embedded-1m.toml`), except the rows marked x2: plain
nginx proxy_pass with `worker_processes 2` (port 18023, the peers' `plain.conf` with two workers)
and the same three graygate configs with `workers = 2` (ports 18221-18223). wrk (2 threads), the
backends, Redis and memcached share the same 2 cores with the system under test.

The graygate targets send the gray identity, so every request goes down the lookup path to the
canary: `X-Real-IP: 10.0.0.7` (memcached list, and the embedded list of one million identities)
and `TOKEN: abc` (Redis token -> user id, then the `Grayscale_Range` JSON).

## Same-run table

```
{chr(10).join(lines)}
```

## Ratios (requests per second, median of the rounds)

| graygate / peer | ratio | target | |
|---|---|---|---|
{line('18201', '18001', 6)}
{line('18202', '18002', 6)}
{line('18201', '18011', 2)}
{line('18202', '18012', 2)}
{line('18201', '18003', 1.0)}
{line('18202', '18003', 1.0)}
{line('18203', '18003', 1.0)}

p99 latency against plain nginx proxy_pass (target: no worse):

| graygate | p99 | nginx | |
|---|---|---|---|
{p99('18201', '18003')}
{p99('18202', '18003')}
{p99('18203', '18003')}

## Scaling: one worker to two (Issue 15)

Requests per second with one worker and with two (nginx `worker_processes`, graygate `workers`),
in the same rounds. On {cores} cores shared with wrk, the backends and the stores, a second worker
mostly takes the CPU time the first one left to the others.

| target | 1 worker | 2 workers | 2 / 1 |
|---|---|---|---|
{scaling('18003', '18023')}
{scaling('18201', '18221')}
{scaling('18202', '18222')}
{scaling('18203', '18223')}

Target at two workers: graygate at least as fast as plain nginx proxy_pass with two workers.

| graygate / peer | ratio | target | |
|---|---|---|---|
{line('18221', '18023', 1.0)}
{line('18222', '18023', 1.0)}
{line('18223', '18023', 1.0)}

{before_after}
## Memory (RSS)

| graygate | idle (after start) | peak under load |
|---|---|---|
| seed-000 (memcached list) | {idle_a/1024:.1f} MiB | {peak_a/1024:.1f} MiB |
| seed-001 (Redis range) | {idle_b/1024:.1f} MiB | {peak_b/1024:.1f} MiB |
| embedded, 1,000,000 identities | {idle_e/1024:.1f} MiB | {peak_e/1024:.1f} MiB |

Target: the embedded list of 1,000,000 identities idles in at most 64 MiB: {'met' if idle_e <= 64 * 1024 else 'NOT met'} ({idle_e/1024:.1f} MiB).

{tls_section}
{idle_section}
## Micro-benchmarks (`cargo bench --bench policy`)

One decision that walks every rule (no rule matches, then the split), a CIDR lookup among one
million networks, and the sticky bucketing hash. Target: at most 200 ns per decision at 1,000 rules.

```
{micro}
```
"""
keep = ""
if os.path.exists(out):
    old = open(out).read()
    i = old.find("\n## Profile")
    if i >= 0:
        keep = old[i:]
open(out, "w").write(doc + keep)
print(f"wrote {out}")
PY
