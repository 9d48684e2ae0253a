#!/usr/bin/env bash
# TLS and HTTP/2 termination: graygate against nginx, in the same interleaved rounds.
#
#   bench/tls.sh            # ~5 minutes; appends/replaces "TLS and HTTP/2, same run" in docs/benchmarks.md
#
# One self-signed certificate (openssl req -x509, into a temp dir) serves both. One backend (a plain
# nginx answering "prod" on 127.0.0.1:18480) behind both. nginx: one worker, `listen ... ssl http2`,
# proxy_pass to a keepalive upstream. graygate: one worker thread (`workers = 1`), `[tls] listen`,
# the backend as its only (stable) upstream, a policy with no rules. Both speak TLS 1.3: nginx is
# given `ssl_protocols TLSv1.2 TLSv1.3` (its default since 1.23.4; Debian 12's nginx 1.22 still
# defaults to TLSv1 to TLSv1.2, so that every client would get TLS 1.2 from it and TLS 1.3 from
# graygate, and test 2 would compare two protocols). nginx-tls12, that same nginx with its 1.22
# default, is measured in test 2 as well, for reference. Three measurements a round,
# each against nginx then graygate:
#   1. HTTPS keep-alive:  wrk -t2 -c50 -d10s https://127.0.0.1:PORT/
#   2. new handshakes:    the same with -H "Connection: close" (one TLS handshake per request)
#   3. HTTP/2 over TLS:   h2load -n 100000 -c 10 -m 10 https://127.0.0.1:PORT/  (ALPN h2)
# Env: REPS (3 rounds; the median is shown), DUR (10s), WARM (2s, discarded), CONNS (50),
# THREADS (2), H2N (100000), KEY (ec: ECDSA P-256, or rsa: RSA 2048), OUT (docs/benchmarks.md;
# OUT=- prints only), SKIP_BUILD=1.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/docs/benchmarks.md}
REPS=${REPS:-3} DUR=${DUR:-10s} WARM=${WARM:-2s} CONNS=${CONNS:-50} THREADS=${THREADS:-2}
H2N=${H2N:-100000} KEY=${KEY:-ec}
P_BACK=18480 P_NGINX=18443 P_GG=18444 P_NOSESS=18445 P_TLS12=18446
cd "$ROOT"

need=()
for c in nginx:nginx wrk:wrk h2load:nghttp2-client openssl:openssl curl:curl; do
    command -v "${c%%:*}" >/dev/null 2>&1 || need+=("${c##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then cargo build --release --locked --quiet; fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/graygate
[ -x "$BIN" ] || { echo "no graygate binary at $BIN"; exit 1; }

T=$(mktemp -d /tmp/graygate-tls-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for n in backend nginx nosess tls12; do
        [ -f "$T/$n/nginx.pid" ] && kill "$(cat "$T/$n/nginx.pid")" 2>/dev/null || true
    done
    rm -rf "$T"
}
trap cleanup EXIT

# The certificate both servers present.
case $KEY in
    ec) keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
    rsa) keyopt=(-newkey rsa:2048) ;;
    *) echo "KEY must be ec or rsa"; exit 1 ;;
esac
openssl req -x509 "${keyopt[@]}" -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$T/key.pem" -out "$T/cert.pem" 2>/dev/null

nginx_conf() {  # nginx_conf NAME SERVER-BLOCK-AND-UPSTREAMS
    mkdir -p "$T/$1/tmp"
    cat >"$T/$1/nginx.conf" <<EOF
worker_processes 1;
pid $T/$1/nginx.pid;
error_log $T/$1/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    keepalive_requests 1000000;
    client_body_temp_path $T/$1/tmp/body;
    proxy_temp_path $T/$1/tmp/proxy;
    fastcgi_temp_path $T/$1/tmp/fastcgi;
    uwsgi_temp_path $T/$1/tmp/uwsgi;
    scgi_temp_path $T/$1/tmp/scgi;
$2
}
EOF
    nginx -p "$T/$1/" -c "$T/$1/nginx.conf" -e "$T/$1/error.log"
}
nginx_conf backend "    server { listen 127.0.0.1:$P_BACK backlog=4096; location / { return 200 \"prod\\n\"; } }"
# nginx 1.22 (Debian 12) has no `http2 on;`: HTTP/2 is the listen parameter there.
nginx_conf nginx "    upstream backend { server 127.0.0.1:$P_BACK; keepalive 64; }
    server {
        listen 127.0.0.1:$P_NGINX ssl http2 backlog=4096;
        ssl_certificate $T/cert.pem;
        ssl_certificate_key $T/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_pass http://backend;
        }
    }"

# Variants of that nginx, measured in test 2 only: NAME on PORT, its conf edited by SED-EXPR.
nginx_variant() {  # nginx_variant NAME PORT SED-EXPR
    mkdir -p "$T/$1/tmp"
    sed -e "s|$T/nginx/|$T/$1/|g" -e "s|127.0.0.1:$P_NGINX ssl|127.0.0.1:$2 ssl|" -e "$3" \
        "$T/nginx/nginx.conf" >"$T/$1/nginx.conf"
    nginx -p "$T/$1/" -c "$T/$1/nginx.conf" -e "$T/$1/error.log"
}
# Session resumption off (no cache is nginx's default; tickets off too): every handshake of test
# 2 is a full one, as graygate's may be.
nginx_variant nosess $P_NOSESS \
    "s|ssl_certificate_key $T/key.pem;|&\\n        ssl_session_tickets off; ssl_session_cache off;|"
# nginx 1.22's own protocols (TLSv1 to TLSv1.2): resumed TLS 1.2 sessions need no key exchange,
# resumed TLS 1.3 ones one X25519 exchange (RFC 8446's psk_dhe_ke, the only mode OpenSSL's
# client offers).
nginx_variant tls12 $P_TLS12 "/ssl_protocols TLSv1.2 TLSv1.3;/d"

cat >"$T/graygate.toml" <<EOF
listen = []
workers = 1

[store]
kind = "embedded"
path = "$T/graygate-data"

[tls]
listen = ["127.0.0.1:$P_GG"]
certs = [{ cert = "cert.pem", key = "key.pem" }]

[[upstreams]]
name = "prod"
servers = ["127.0.0.1:$P_BACK"]

[policy]
[[policy.routes]]
service = "web"

[[policy.services]]
name = "web"
stable = "prod"
versions = { prod = "prod" }
EOF
"$BIN" run --config "$T/graygate.toml" >"$T/graygate.log" 2>&1 &
pids+=($!)

for p in $P_BACK $P_NGINX $P_NOSESS $P_TLS12 $P_GG; do  # bounded: 10 s a port
    for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
    [ "$i" -lt 100 ] || { echo "nothing listens on :$p"; cat "$T"/*.log "$T"/*/error.log 2>/dev/null; exit 1; }
done

# Check before measuring: both answer the backend's body over HTTPS, HTTP/1.1 and h2.
for p in $P_NGINX $P_GG; do
    for v in --http1.1 --http2; do
        got=$(curl -s -m 3 -k $v -o /dev/null -w '%{http_version} ' "https://127.0.0.1:$p/")$(curl -s -m 3 -k $v "https://127.0.0.1:$p/")
        case $v:$got in --http1.1:"1.1 prod"|--http2:"2 prod") ;; *) echo ":$p $v answered '$got'"; exit 1 ;; esac
    done
done

# wrk keeps a cleanly closed connection's TLS session (OpenSSL SSL_clear) and may offer it again, so a
# server that resumes sessions does abbreviated handshakes in test 2. Say which servers resume:
# of 3 connections each offering the session of the one before (after a full request, so TLS 1.3
# tickets sent after the handshake are read), how many were resumed.
resumed() {
    local s=$T/sess n=0 req='GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'
    printf "$req" | timeout 5 openssl s_client -connect "127.0.0.1:$1" -ign_eof -sess_out "$s" >/dev/null 2>&1 || true
    for _ in 1 2 3; do
        printf "$req" | timeout 5 openssl s_client -connect "127.0.0.1:$1" -ign_eof -sess_in "$s" -sess_out "$s" 2>/dev/null \
            | grep -q '^Reused' && n=$((n + 1))
    done
    rm -f "$s"; echo "$n/3"
}
RESUME="nginx $(resumed $P_NGINX), nginx without resumption $(resumed $P_NOSESS), graygate $(resumed $P_GG)"
echo "sessions resumed: $RESUME"

RAW=$T/raw
wrk_one() {  # wrk_one TEST PORT [HEADER] -> "TEST|PORT|rps|p50|p99|errors"
    local args=(-t"$THREADS" -c"$CONNS" ${3:+-H "$3"} "https://127.0.0.1:$2/")
    timeout 60 wrk -d"$WARM" "${args[@]}" >/dev/null
    timeout 60 wrk -d"$DUR" --latency "${args[@]}" | awk -v t="$1" -v n="$2" '
        function ms(v) { return v ~ /us$/ ? v/1000 : v ~ /ms$/ ? v+0 : v*1000 }
        /Requests\/sec/ {rps=$2}  $1=="50%" {p50=ms($2)}  $1=="99%" {p99=ms($2)}
        /Socket errors/ {gsub(",",""); e+=$4+$6+$8+$10}  /Non-2xx/ {e+=$5}
        END {printf "%s|%s|%.0f|%.2f|%.2f|%d\n", t, n, rps, p50, p99, e}'
}
h2_one() {  # h2_one PORT -> "h2|PORT|rps|p50|p99|errors" (h2load gives mean and max, not percentiles: "-")
    timeout 120 h2load -n "$H2N" -c 10 -m 10 "https://127.0.0.1:$1/" | awk -v n="$1" '
        /^finished in/ {rps=$4}
        /^requests:/ {e=$10+$12}
        /^status codes:/ {gsub(",",""); e+=$7+$9}
        /^Application protocol:/ {proto=$3}
        END {if (proto != "h2") e+=1000000; printf "h2|%s|%.0f|-|-|%d\n", n, rps, e}'
}
: >"$RAW"
for rep in $(seq "$REPS"); do
    for p in $P_NGINX $P_GG; do wrk_one keepalive "$p" >>"$RAW"; done
    for p in $P_NGINX $P_NOSESS $P_TLS12 $P_GG; do wrk_one handshake "$p" "Connection: close" >>"$RAW"; done
    for p in $P_NGINX $P_GG; do h2_one "$p" >>"$RAW"; done
done

name() { case $1 in $P_NGINX) echo nginx ;; $P_NOSESS) echo nginx-nores ;; $P_TLS12) echo nginx-tls12 ;; *) echo graygate ;; esac; }
TABLE=$T/table
{
    printf '%-28s %-11s %6s %8s %8s %8s %6s  %s\n' test target port req/s p50_ms p99_ms errors "runs (req/s)"
    for t in keepalive handshake h2; do
        ports="$P_NGINX $P_GG"; [ $t = handshake ] && ports="$P_NGINX $P_NOSESS $P_TLS12 $P_GG"
        for p in $ports; do
            col() { grep "^$t|$p|" "$RAW" | cut -d'|' -f"$1"; }
            med() { col "$1" | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
            case $t in keepalive) d="HTTPS keep-alive (wrk)" ;; handshake) d="new TLS handshakes (wrk)" ;; h2) d="HTTP/2 over TLS (h2load)" ;; esac
            printf '%-28s %-11s %6s %8s %8s %8s %6s  [%s]\n' "$d" "$(name "$p")" "$p" "$(med 3)" "$(med 4)" "$(med 5)" \
                "$(col 6 | awk '{s+=$1} END {print s}')" "$(col 3 | paste -sd' ')"
        done
    done
} >"$TABLE"
cat "$TABLE"
[ "$OUT" = - ] && exit 0

python3 - "$TABLE" "$OUT" "$REPS" "$DUR" "$CONNS" "$THREADS" "$H2N" "$KEY" "$(nproc)" \
    "$(openssl version | awk '{print $1, $2}')" "$(nginx -v 2>&1 | sed 's|.*nginx/||')" "$(wrk -v 2>&1 | head -1 | awk '{print $2}')" "$(h2load --version | awk '{print $2}')" "$RESUME" <<'PY'
import sys, re, datetime, os
table, out, reps, dur, conns, threads, h2n, key, cores, ossl, ngxv, wrkv, h2v, resume = sys.argv[1:15]
lines = open(table).read().splitlines()
rows = {}
for l in lines[1:]:
    m = re.match(r"^(.+?)\s{2,}(nginx-nores|nginx-tls12|nginx|graygate)\s+(\d+)\s+(\d+)\s", l)
    if m:
        rows[(m.group(1).strip(), m.group(2))] = int(m.group(4))
ratios = []
for test in ["HTTPS keep-alive (wrk)", "new TLS handshakes (wrk)", "HTTP/2 over TLS (h2load)"]:
    g, n = rows.get((test, "graygate")), rows.get((test, "nginx"))
    if g and n:
        ratios.append(f"| {test} | {g} | nginx {n} | {g / n:.2f}x |")
    for other in ["nginx-nores", "nginx-tls12"]:
        r = rows.get((test, other))
        if g and r:
            ratios.append(f"| {test} | {g} | {other} {r} | {g / r:.2f}x |")
keytxt = "ECDSA P-256" if key == "ec" else "RSA 2048"
section = f"""## TLS and HTTP/2, same run

Produced by `bench/tls.sh` on {datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M')} UTC, on this
project's machine ({cores} cores), {reps} interleaved rounds (nginx then graygate for each test, every
round), median shown. One self-signed {keytxt} certificate (`openssl req -x509`) served by both; one
backend (a plain nginx answering `prod`, one worker) behind both, on loopback.

- nginx {ngxv} (Debian's; it predates `http2 on;`, so `listen ... ssl http2`), one worker,
  `proxy_pass` to an upstream with `keepalive 64`, `ssl_protocols TLSv1.2 TLSv1.3` (the default
  of nginx 1.23.4 and later; this nginx's own default stops at TLS 1.2, and graygate speaks TLS
  1.3), the other TLS settings nginx's defaults.
- graygate, `workers = 1`, `[tls] listen` with the same certificate and key, the backend as the
  stable upstream, a policy with no rules (every request goes to stable).
- Clients on the same 2 cores: wrk {wrkv} (with {ossl}), h2load {h2v}.
  1. HTTPS keep-alive: `wrk -t{threads} -c{conns} -d{dur} --latency https://127.0.0.1:PORT/` (2 s warm-up discarded);
  2. new TLS handshakes: the same with `-H "Connection: close"`, so every request is a new
     connection and a new handshake (requests/s = handshakes/s). wrk keeps a cleanly closed connection's
     TLS session and may offer it again on reconnecting, so a server that resumes sessions does
     abbreviated handshakes here. Before the rounds, 3 `openssl s_client` connections each offering
     the session of the one before were resumed by: {resume}. `nginx-nores` is the same nginx with `ssl_session_tickets off;
     ssl_session_cache off;`, measured in test 2 only, so that its handshakes are all full ones;
     `nginx-tls12` is the same nginx with this version's own default protocols (TLS 1.2 at most),
     also in test 2 only: a resumed TLS 1.2 session needs no key exchange, a resumed TLS 1.3 one
     an X25519 exchange;
  3. HTTP/2 over TLS (ALPN `h2`, checked): `h2load -n {h2n} -c 10 -m 10 https://127.0.0.1:PORT/`.
     h2load gives no percentiles, so p50/p99 are `-` there.

```
{chr(10).join(lines)}
```

| test | graygate req/s | nginx req/s | graygate / nginx |
|---|---|---|---|
{chr(10).join(ratios)}
"""
doc = open(out).read() if os.path.exists(out) else "# Benchmarks\n"
start = doc.find("\n## TLS and HTTP/2, same run")
if start >= 0:
    nxt = doc.find("\n## ", start + 1)
    doc = doc[:start] + "\n" + section + (doc[nxt:] if nxt >= 0 else "")
else:
    doc = doc.rstrip("\n") + "\n\n" + section
open(out, "w").write(doc)
print(f"wrote {out}")
PY
