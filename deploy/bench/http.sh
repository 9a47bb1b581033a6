#!/usr/bin/env bash
# Authenticated HTTP keep-alive: `wrk -t1 -c$CONNECTIONS` sending `GET /api/bench?token=<HS256 JWT>`
# through each proxy to nginx answering `return 200` itself (deploy/bench/nginx-return200.conf).
# Targets, each with one worker thread pinned to CPU 0 (wrk and nginx on CPU 1):
#   nginx-direct        wrk -> nginx (the ceiling)
#   bare-pingora        a pingora-proxy pass-through, no auth (auth-proxy/examples/bare_pingora.rs)
#   auth-proxy          cached user (SQLite Users table), token verified once then remembered, identity signed
#   auth-proxy-verify-every-request   the same with jwt.verified_cache_capacity = 0 (the signature checked
#                       on every request, as HAProxy's jwt_verify does): the cost the token cache saves
#   haproxy-jwt_verify  HS256 jwt_verify on the same token (deploy/bench/haproxy.cfg)
# All five run at once on their own ports; ROUNDS alternating rounds of HTTP_DURATION seconds each;
# the table reports medians and the ratio to HAProxy of the same rounds.
# Expects release binaries (run.sh builds them). Usage: deploy/bench/http.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BENCH=$ROOT/deploy/bench
OUT=${OUT:-$ROOT/target/bench}/http
ROUNDS=${ROUNDS:-5}
HTTP_DURATION=${HTTP_DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
SECRET="bench-secret-0123456789abcdef0123456789abcdef"
IDENTITY="bench-identity-0123456789abcdef0123456789abcd"
NGINX_PORT=19100 BARE_PORT=18091 PROXY_PORT=18092 ADMIN_PORT=19092 HAPROXY_PORT=18093
NOCACHE_PORT=18097 NOCACHE_ADMIN_PORT=19097
if [ "$(nproc)" -ge 2 ]; then PIN_PROXY="taskset -c 0" PIN_LOAD="taskset -c 1"; else PIN_PROXY="" PIN_LOAD=""; fi
PROXY_BIN=$ROOT/target/release/auth-proxy
BARE_BIN=$ROOT/target/release/examples/bare_pingora
for b in "$PROXY_BIN" "$BARE_BIN"; do [ -x "$b" ] || { echo "missing $b: cargo build --release -p auth-proxy --bins --examples" >&2; exit 1; }; done
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }

rm -rf "$OUT" && mkdir -p "$OUT/nginx/logs"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_http() { for _ in $(seq 1 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done; echo "error: $1" >&2; return 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Users 1..100 and a token for user 1.
{
  echo "CREATE TABLE Users (id INTEGER PRIMARY KEY, username VARCHAR(255) NOT NULL, isAdmin TINYINT(1) DEFAULT 0, createdAt DATETIME NOT NULL, updatedAt DATETIME NOT NULL);"
  for i in $(seq 1 100); do echo "INSERT INTO Users VALUES ($i, 'user$i', 0, '2025-01-01', '2025-01-01');"; done
} | sqlite3 "$OUT/users.db"
TOKEN=$(python3 - "$SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b(json.dumps({"id": 1, "iat": int(time.time())}).encode())
s = b(hmac.new(sys.argv[1].encode(), f"{h}.{p}".encode(), hashlib.sha256).digest())
print(f"{h}.{p}.{s}")
PY
)

sed -e "s#@PREFIX@#$OUT/nginx#g" -e "s/@PORT@/$NGINX_PORT/" "$BENCH/nginx-return200.conf" >"$OUT/nginx/nginx.conf"
$PIN_LOAD nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" 2>"$OUT/nginx.log" & PIDS+=($!)
wait_http "http://127.0.0.1:$NGINX_PORT/"

$PIN_PROXY "$BARE_BIN" "127.0.0.1:$BARE_PORT" "127.0.0.1:$NGINX_PORT" 2>"$OUT/bare.log" & BARE_PID=$!; PIDS+=($BARE_PID)

cat >"$OUT/auth-proxy.toml" <<TOML
listen = "127.0.0.1:$PROXY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
upstream = "127.0.0.1:$NGINX_PORT"
threads = 1
shutdown_grace_secs = 1

[jwt]
secret = "$SECRET"

[users]
database_url = "sqlite://$OUT/users.db"
cache_ttl_secs = 3600

[identity]
secret = "$IDENTITY"

[connections]
max_per_ip = 100000
TOML
RUST_LOG=warn $PIN_PROXY "$PROXY_BIN" --config "$OUT/auth-proxy.toml" 2>"$OUT/auth-proxy.log" & PROXY_PID=$!; PIDS+=($PROXY_PID)
sed -e "s/^listen = .*/listen = \"127.0.0.1:$NOCACHE_PORT\"/" -e "s/^admin_listen = .*/admin_listen = \"127.0.0.1:$NOCACHE_ADMIN_PORT\"/" \
  -e "s/^\[jwt\]$/[jwt]\nverified_cache_capacity = 0/" "$OUT/auth-proxy.toml" >"$OUT/auth-proxy-nocache.toml"
RUST_LOG=warn $PIN_PROXY "$PROXY_BIN" --config "$OUT/auth-proxy-nocache.toml" 2>"$OUT/auth-proxy-nocache.log" & NOCACHE_PID=$!; PIDS+=($NOCACHE_PID)

sed -e "s/@SECRET@/$SECRET/" -e "s/@PORT@/$HAPROXY_PORT/" -e "s/@ECHO@/$NGINX_PORT/" "$BENCH/haproxy.cfg" >"$OUT/haproxy.cfg"
$PIN_PROXY haproxy -db -f "$OUT/haproxy.cfg" 2>"$OUT/haproxy.log" & HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)

wait_http "http://127.0.0.1:$BARE_PORT/"
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
wait_http "http://127.0.0.1:$NOCACHE_ADMIN_PORT/readyz"
wait_http "http://127.0.0.1:$HAPROXY_PORT/health"
curl -fs -o /dev/null "http://127.0.0.1:$PROXY_PORT/api/bench?token=$TOKEN" || { echo "auth-proxy refused the token" >&2; exit 1; }
curl -fs -o /dev/null "http://127.0.0.1:$NOCACHE_PORT/api/bench?token=$TOKEN" || { echo "auth-proxy (no token cache) refused the token" >&2; exit 1; }
curl -fs -o /dev/null "http://127.0.0.1:$HAPROXY_PORT/api/bench?token=$TOKEN" || { echo "haproxy refused the token" >&2; exit 1; }

RESULTS=$OUT/results.jsonl
: >"$RESULTS"
run() { # $1 = name, $2 = port, $3 = pid or empty, $4 = round
  local before=0 after=0 out
  [ -n "$3" ] && before=$(cpu_ticks "$3")
  out=$($PIN_LOAD wrk -t1 -c"$CONNECTIONS" -d"${HTTP_DURATION}s" --latency "http://127.0.0.1:$2/api/bench?token=$TOKEN" || true)
  [ -n "$3" ] && after=$(cpu_ticks "$3")
  echo "$out" | python3 -c '
import json, re, sys
text = sys.stdin.read()
name, rnd, ticks, hz, dur = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
def us(v):
    # wrk prints latencies as 512.00us, 1.24ms, 1.02s or 1.50m.
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[m.group(2)]
def field(pattern, convert):
    m = re.search(pattern, text, re.M)
    return convert(m.group(1)) if m else float("nan")
rps = field(r"^Requests/sec:\s+([\d.]+)", float)
# The latency distribution lines ("     99%    2.31ms"), not the stdev column of the thread stats.
p99 = field(r"^\s+99%\s+(\S+)\s*$", us)
p50 = field(r"^\s+50%\s+(\S+)\s*$", us)
if rps != rps:
    sys.stderr.write("wrk output not understood for %s round %d:\n%s\n" % (name, rnd, text))
    rps = 0.0
non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errors = re.search(r"Socket errors:.*", text)
r = {"target": name, "round": rnd, "rps": rps, "p50_us": p50, "p99_us": p99,
     "non_2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(0) if errors else ""}
if ticks >= 0 and sys.argv[6] == "1" and rps > 0:
    r["cpu_us_per_req"] = ticks * 1e6 / hz / (rps * dur)
print(json.dumps(r))' "$1" "$4" "$((after - before))" "$(getconf CLK_TCK)" "$HTTP_DURATION" "$([ -n "$3" ] && echo 1 || echo 0)" | tee -a "$RESULTS"
}
echo "==> HTTP keep-alive, $ROUNDS alternating rounds of ${HTTP_DURATION}s, wrk -t1 -c$CONNECTIONS"
for round in $(seq 1 "$ROUNDS"); do
  run nginx-direct "$NGINX_PORT" "" "$round"
  run bare-pingora "$BARE_PORT" "$BARE_PID" "$round"
  run auth-proxy "$PROXY_PORT" "$PROXY_PID" "$round"
  run auth-proxy-verify-every-request "$NOCACHE_PORT" "$NOCACHE_PID" "$round"
  run haproxy-jwt_verify "$HAPROXY_PORT" "$HAPROXY_PID" "$round"
done

python3 - "$RESULTS" >"$OUT/table.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
targets = ["nginx-direct", "bare-pingora", "auth-proxy", "auth-proxy-verify-every-request", "haproxy-jwt_verify"]
by = {t: [r for r in rows if r["target"] == t] for t in targets}
rounds = sorted({r["round"] for r in rows})
ha = {r["round"]: r["rps"] for r in by["haproxy-jwt_verify"] if r["rps"] > 0}
# A round counts only where both the target and HAProxy gave a figure.
by = {t: [r for r in rs if r["rps"] > 0 and r["round"] in ha] for t, rs in by.items()}
print("| target | req/s (median) | p50 | p99 | proxy CPU per request | ratio to HAProxy (median of rounds) | non-2xx |")
print("|---|---:|---:|---:|---:|---:|---:|")
for t in targets:
    rs = by[t]
    if not rs:
        print("| %s | no figure (see the log above) | | | | | |" % t)
        continue
    med = statistics.median(r["rps"] for r in rs)
    p50 = statistics.median(r["p50_us"] for r in rs)
    p99 = statistics.median(r["p99_us"] for r in rs)
    cpu = [r["cpu_us_per_req"] for r in rs if "cpu_us_per_req" in r]
    ratio = statistics.median(r["rps"] / ha[r["round"]] for r in rs)
    spread = "%.2f-%.2f" % (min(r["rps"] / ha[r["round"]] for r in rs), max(r["rps"] / ha[r["round"]] for r in rs))
    print("| %s | %.0f | %.0f us | %.0f us | %s | %.2fx (%s) | %d |" % (
        t, med, p50, p99, ("%.1f us" % statistics.median(cpu)) if cpu else "-", ratio, spread,
        sum(r["non_2xx"] for r in rs)))
PY
cat "$OUT/table.md"

# ---------------------------------------------------------------- RSS per idle tunnel (IDLE_N tunnels)
# A second auth-proxy and HAProxy in front of deploy/bench/idle_tunnels.py's minimal upstream
# (answers 101, holds); the same script opens IDLE_N tunnels through each and reads VmRSS.
IDLE_N=${IDLE_N:-4000}
IDLE_UP=19101 IDLE_PROXY=18094 IDLE_ADMIN=19094 IDLE_HAPROXY=18095
sed -e "s/$PROXY_PORT/$IDLE_PROXY/" -e "s/$ADMIN_PORT/$IDLE_ADMIN/" -e "s/$NGINX_PORT/$IDLE_UP/" "$OUT/auth-proxy.toml" >"$OUT/idle-auth-proxy.toml"
RUST_LOG=warn $PIN_PROXY "$PROXY_BIN" --config "$OUT/idle-auth-proxy.toml" 2>"$OUT/idle-auth-proxy.log" & IDLE_PID=$!; PIDS+=($IDLE_PID)
sed -e "s/@SECRET@/$SECRET/" -e "s/@PORT@/$IDLE_HAPROXY/" -e "s/@ECHO@/$IDLE_UP/" "$BENCH/haproxy.cfg" >"$OUT/idle-haproxy.cfg"
$PIN_PROXY haproxy -db -f "$OUT/idle-haproxy.cfg" 2>"$OUT/idle-haproxy.log" & IDLE_HA_PID=$!; PIDS+=($IDLE_HA_PID)
sleep 1
for t in "auth-proxy $IDLE_PROXY $IDLE_PID" "haproxy-jwt_verify $IDLE_HAPROXY $IDLE_HA_PID"; do
  read -r name port pid <<<"$t"
  echo "==> $name: $IDLE_N idle tunnels"
  $PIN_LOAD python3 "$BENCH/idle_tunnels.py" --listen-upstream "$IDLE_UP" --proxy "$port" --token "$TOKEN" --pid "$pid" -n "$IDLE_N" \
    | sed "s/^{/{\"target\": \"$name\", /" | tee -a "$OUT/idle.jsonl"
done
