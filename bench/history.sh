#!/usr/bin/env bash
# What the policy history costs: a ~9 MB policy written through the admin API, then 5 weight
# changes, on an embedded store. Prints the data directory's size after each step, the size and
# status of `GET /v1/history?limit=1000` and of every page of the history, and graygate's RSS.
#
#   bench/history.sh                        # target/release/graygate (built if missing)
#   BIN=/path/to/graygate bench/history.sh  # another binary (an older one, to compare)
#
# Env: CIDRS (how many networks the policy's rule lists; 560000 make ~9 MB), CHANGES (5; past 5,
# the size after 5 is printed too).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/graygate}
CIDRS=${CIDRS:-560000}
CHANGES=${CHANGES:-5}
[ -x "$BIN" ] || (cd "$ROOT" && cargo build --release --quiet)
for c in curl python3 du; do command -v "$c" >/dev/null || { echo "needs $c" >&2; exit 1; }; done

WORK=$(mktemp -d /tmp/graygate-history.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

cat >"$WORK/graygate.toml" <<TOML
listen = ["127.0.0.1:0"]
[store]
path = "$WORK/data"
[admin]
listen = "127.0.0.1:0"
tokens = [{ name = "bench", token = "bench-token-0123456789" }]
[[upstreams]]
name = "prod"
servers = ["127.0.0.1:9"]
[[upstreams]]
name = "gray"
servers = ["127.0.0.1:9"]
TOML

python3 - "$WORK/policy.json" "$CIDRS" <<'PY'
import json, sys
path, n = sys.argv[1], int(sys.argv[2])
cidrs = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32" for i in range(n)]
doc = {"routes": [{"service": "web"}],
       "services": [{"name": "web", "stable": "stable",
                     "versions": {"stable": "prod", "canary": "gray"},
                     "rules": [{"name": "gray-networks", "version": "canary",
                                "when": {"cidr": cidrs}}]}]}
json.dump(doc, open(path, "w"), separators=(",", ":"))
PY

: >"$WORK/out"
"$BIN" run --config "$WORK/graygate.toml" >"$WORK/out" 2>"$WORK/err" &
pid=$!
for _ in $(seq 200); do
    admin=$(sed -n 's|^graygate: admin on http://||p' "$WORK/out")
    [ -n "$admin" ] && break
    sleep 0.1
done
[ -n "$admin" ] || { echo "graygate did not start:"; cat "$WORK/err"; exit 1; }
auth=(-H "Authorization: Bearer bench-token-0123456789")
rss() { awk '/^VmRSS|^VmHWM/ {printf "%s %d MB  ", $1, $2/1024}' "/proc/$pid/status"; echo; }
size() { du -sb "$WORK/data" | awk '{printf "%.1f MB", $1/1e6}'; }

echo "binary: $BIN"
echo "policy: $(stat -c %s "$WORK/policy.json" | awk '{printf "%.1f MB", $1/1e6}') ($CIDRS networks)"
echo "data directory at start: $(size)"
curl -sf "${auth[@]}" -X PUT -H 'Content-Type: application/json' \
    --data-binary @"$WORK/policy.json" "http://$admin/v1/policy" -o /dev/null
echo "data directory after the policy: $(size)"
for i in $(seq "$CHANGES"); do
    [ "$i" -eq 6 ] && echo "data directory after 5 weight changes: $(size)"
    curl -sf "${auth[@]}" -X PUT -H 'Content-Type: application/json' \
        -d "{\"weights\": {\"canary\": $((i % 10 * 10 + 1))}}" "http://$admin/v1/services/web/weights" -o /dev/null
done
echo "data directory after $CHANGES weight changes: $(size)"
echo "RSS before reading the history: $(rss)"
curl -s "${auth[@]}" "http://$admin/v1/history?limit=1000" -o "$WORK/h1000" \
    -w 'GET /v1/history?limit=1000: %{http_code}, %{size_download} bytes\n'
echo "RSS after: $(rss)"
# Every page, as `ctl history --all` reads them.
next="/v1/history?limit=100"; pages=0; bytes=0
while [ -n "$next" ]; do
    curl -sf "${auth[@]}" "http://$admin$next" -o "$WORK/page"
    pages=$((pages + 1)); bytes=$((bytes + $(stat -c %s "$WORK/page")))
    next=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("next") or "")' "$WORK/page")
    [ "$pages" -ge 100 ] && break
done
echo "every page of the history: $pages page(s), $bytes bytes"
code=$(curl -s "${auth[@]}" "http://$admin/v1/history/2" -o "$WORK/one" -w '%{http_code}')
echo "GET /v1/history/2: $code, $(stat -c %s "$WORK/one") bytes"
echo "RSS at the end: $(rss)"
