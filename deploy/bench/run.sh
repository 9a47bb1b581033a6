#!/usr/bin/env bash
# One benchmark run, one machine, same load for every target:
#   direct          loadgen -> echo upstream (the physical limit)
#   auth-proxy      cached user (SQLite Users table), each token verified once then remembered
#   auth-proxy      caches off, SQLite         (every handshake verifies its token and queries the Users table)
#   auth-proxy      caches off, PostgreSQL
#   haproxy         HS256 jwt_verify on the same token (deploy/bench/haproxy.cfg)
#   nginx           plain proxy_pass, no authentication (deploy/bench/nginx.conf)
# then alternating short rounds of the cached auth-proxy and HAProxy (handshakes and messages under load),
# for their ratios, and of direct, auth-proxy and HAProxy at one client, for the added handshake p99 and
# the added message round trip.
# Each proxy runs alone, with one worker thread, pinned to CPU 0; loadgen and the echo upstream share
# CPU 1. Before each target, the run waits for the previous target's TIME_WAIT sockets to expire.
# Results: a table on stdout, raw JSON lines in $OUT/results.jsonl, and the table written into
# BENCHMARKS.md between its markers.
#
# Usage: deploy/bench/run.sh [--quick]
#   --quick          2 s per measurement, 1,000 idle connections, no TIME_WAIT settling (a smoke run)
#   DURATION=10 CONNECTIONS=32 IDLE=9500 ROUNDS=5 ALT_DURATION=5 SETTLE=1 OUT=target/bench   environment knobs
# Then the HTTP keep-alive comparison (deploy/bench/http.sh: wrk, nginx `return 200`, HAProxy, bare pingora).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BENCH=$ROOT/deploy/bench

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
# A proxy holds two descriptors per tunnel; 9,500 tunnels fit a 20,000 descriptor hard limit.
IDLE=${IDLE:-9500}
IDLE_HOLD=${IDLE_HOLD:-10}
ROUNDS=${ROUNDS:-5}
ALT_DURATION=${ALT_DURATION:-5}
SETTLE=${SETTLE:-1}
OUT=${OUT:-$ROOT/target/bench}
WRITE_MD=1
if [ "${1:-}" = "--quick" ]; then
  DURATION=2 IDLE=1000 IDLE_HOLD=2 ROUNDS=2 ALT_DURATION=2 SETTLE=0 WRITE_MD=0
fi

SECRET="bench-secret-0123456789abcdef0123456789abcdef"
IDENTITY="bench-identity-0123456789abcdef0123456789abcd"
USERS=1000
PG_ADMIN_URL=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
PG_DB=auth_proxy_bench
PG_URL="${PG_ADMIN_URL%/*}/$PG_DB"
ECHO_PORT=19000 PROXY_PORT=18080 ADMIN_PORT=19090

CPUS=$(nproc)
if [ "$CPUS" -ge 2 ]; then PIN_PROXY="taskset -c 0" PIN_LOAD="taskset -c 1"; else PIN_PROXY="" PIN_LOAD=""; fi

# ---------------------------------------------------------------- prerequisites and build
scripts/prereqs.sh
missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "==> building release binaries"
cargo build --release --locked -p auth-proxy --bins --examples -p loadgen
PROXY_BIN=$ROOT/target/release/auth-proxy
LOADGEN=$ROOT/target/release/loadgen

rm -rf "$OUT" && mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

# ---------------------------------------------------------------- fixtures: users 1..USERS
users_sql() { # $1 = sqlite | postgres
  local admin_type='TINYINT(1)' q='' ts='DATETIME'
  [ "$1" = postgres ] && admin_type=BOOLEAN q='"' ts='TIMESTAMP WITH TIME ZONE'
  echo "CREATE TABLE ${q}Users${q} (${q}id${q} INTEGER PRIMARY KEY, ${q}username${q} VARCHAR(255) NOT NULL,"
  echo "  ${q}isAdmin${q} $admin_type DEFAULT $([ "$1" = postgres ] && echo false || echo 0),"
  echo "  ${q}createdAt${q} $ts NOT NULL, ${q}updatedAt${q} $ts NOT NULL);"
  echo "BEGIN;"
  for i in $(seq 1 "$USERS"); do
    echo "INSERT INTO ${q}Users${q} (${q}id${q}, ${q}username${q}, ${q}createdAt${q}, ${q}updatedAt${q}) VALUES ($i, 'user$i', '2025-01-01', '2025-01-01');"
  done
  echo "COMMIT;"
}
users_sql sqlite | sqlite3 "$OUT/users.db"
psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $PG_DB" -c "CREATE DATABASE $PG_DB" >/dev/null
users_sql postgres | psql -q "$PG_URL" >/dev/null

# ---------------------------------------------------------------- process helpers
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_http() { # $1 = url; bounded: 100 tries, 0.1 s apart
  for _ in $(seq 1 100); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "error: $1 did not answer" >&2
  return 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# Every handshake leaves loopback sockets in TIME_WAIT for 60 s, and a target measured while the
# previous target's sockets linger pays for it in connect(). Wait (bounded, 75 s) until few remain.
settle() {
  [ "$SETTLE" = 1 ] || return 0
  local tw=0
  for _ in $(seq 1 150); do
    tw=$(ss -Htan state time-wait | wc -l)
    [ "$tw" -lt "${SETTLE_BELOW:-500}" ] && return 0
    sleep 0.5
  done
  echo "    (still $tw sockets in TIME_WAIT after 75 s)"
}

# loadgen <target-name> <pid-or-empty> <scenario> [args...]: appends one JSON line with the proxy's
# CPU time per operation (from /proc/PID/stat) added.
measure() {
  local target=$1 pid=$2 scenario=$3
  shift 3
  local before=0 after=0 line
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  line=$($PIN_LOAD "$LOADGEN" --threads 1 "$scenario" --json --secret "$SECRET" --user-ids "$USER_IDS" "$@")
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  local hz
  hz=$(getconf CLK_TCK)
  echo "$line" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
target, label, ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r["target"] = target
r["label"] = label
if r.get("ok") and sys.argv[5] == "1":
    r["proxy_cpu_us_per_op"] = ticks * 1e6 / hz / r["ok"]
print(json.dumps(r))' "$target" "$LABEL" "$((after - before))" "$hz" "$([ -n "$pid" ] && echo 1 || echo 0)" | tee -a "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("    %-22s %10.0f/s  p50 %6d us  p99 %6d us  errors %d" % (r["label"], r["per_second"], r["p50_us"], r["p99_us"], r["errors"]))'
}

# The same measurements against one target. $1 = name, $2 = ws/http base, $3 = pid to watch.
suite() {
  local name=$1 base=$2 pid=$3
  echo "==> $name"
  settle
  LABEL=handshakes measure "$name" "$pid" handshakes --url "ws://$base/ws/bench" \
    --connections "$CONNECTIONS" --duration "$DURATION"
  LABEL=handshake-latency measure "$name" "$pid" handshakes --url "ws://$base/ws/bench" \
    --connections 1 --duration "$DURATION"
  LABEL=roundtrip measure "$name" "$pid" roundtrip --url "ws://$base/ws/bench" \
    --connections "$CONNECTIONS" --duration "$DURATION"
  LABEL=roundtrip-latency measure "$name" "$pid" roundtrip --url "ws://$base/ws/bench" \
    --connections 1 --duration "$DURATION"
  LABEL=http-bearer measure "$name" "$pid" http --url "http://$base/api/bench" \
    --connections "$CONNECTIONS" --duration "$DURATION"
  if [ "${IDLE_TOO:-0}" = 1 ] && [ -n "$pid" ]; then
    settle
    LABEL=idle measure "$name" "$pid" idle --url "ws://$base/ws/idle" \
      --connections "$IDLE" --duration "$IDLE_HOLD" --pid "$pid"
  fi
}

# ---------------------------------------------------------------- the echo upstream (CPU 1)
$PIN_LOAD "$LOADGEN" --threads 1 echo-server --listen "127.0.0.1:$ECHO_PORT" 2>"$OUT/echo.log" &
ECHO_PID=$!
PIDS+=("$ECHO_PID")
wait_http "http://127.0.0.1:$ECHO_PORT/health"

USER_IDS="1..=$USERS"
suite direct "127.0.0.1:$ECHO_PORT" ""

# ---------------------------------------------------------------- auth-proxy variants (CPU 0)
auth_proxy() { # $1 = name, $2 = database url, $3 = cache ttl (0 also turns the verified-token cache off), $4 = user ids
  cat >"$OUT/$1.toml" <<EOF
listen = "127.0.0.1:$PROXY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
upstream = "127.0.0.1:$ECHO_PORT"
threads = 1
shutdown_grace_secs = 1

[jwt]
secret = "$SECRET"
verified_cache_capacity = $([ "$3" = 0 ] && echo 0 || echo 10000)

[users]
database_url = "$2"
cache_ttl_secs = $3

[identity]
secret = "$IDENTITY"

# One loadgen client holds up to $IDLE tunnels from one address.
[connections]
max_per_ip = 100000
EOF
  RUST_LOG=warn $PIN_PROXY "$PROXY_BIN" --config "$OUT/$1.toml" 2>"$OUT/$1.log" &
  local pid=$!
  PIDS+=("$pid")
  wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
  USER_IDS=$4 IDLE_TOO=${5:-0} suite "$1" "127.0.0.1:$PROXY_PORT" "$pid"
  curl -fs "http://127.0.0.1:$ADMIN_PORT/metrics" >"$OUT/$1.metrics" || true
  stop "$pid"
}
# The cached run uses 100 users (all hit the user and token caches after their first handshake); the
# uncached runs spread over all 1,000 users with both caches off, so every handshake verifies the
# signature and makes a real query.
auth_proxy auth-proxy-cached "sqlite://$OUT/users.db" 30 "1..=100" 1
auth_proxy auth-proxy-nocache-sqlite "sqlite://$OUT/users.db" 0 "1..=$USERS"
auth_proxy auth-proxy-nocache-postgres "$PG_URL" 0 "1..=$USERS"

# ---------------------------------------------------------------- HAProxy jwt_verify (CPU 0)
haproxy_config() { # $1 = listen port, $2 = output file
  sed -e "s/@SECRET@/$SECRET/" -e "s/@PORT@/$1/" -e "s/@ECHO@/$ECHO_PORT/" "$BENCH/haproxy.cfg" >"$2"
}
haproxy_config "$PROXY_PORT" "$OUT/haproxy.cfg"
haproxy -c -q -f "$OUT/haproxy.cfg"
$PIN_PROXY haproxy -db -f "$OUT/haproxy.cfg" 2>"$OUT/haproxy.log" &
HAPROXY_PID=$!
PIDS+=("$HAPROXY_PID")
wait_http "http://127.0.0.1:$PROXY_PORT/health"
USER_IDS="1..=100" IDLE_TOO=1 suite haproxy-jwt_verify "127.0.0.1:$PROXY_PORT" "$HAPROXY_PID"
stop "$HAPROXY_PID"

# ---------------------------------------------------------------- nginx proxy_pass (CPU 0)
mkdir -p "$OUT/nginx/logs"
sed -e "s#@PREFIX@#$OUT/nginx#g" -e "s/@PORT@/$PROXY_PORT/" -e "s/@ECHO@/$ECHO_PORT/" \
  "$BENCH/nginx.conf" >"$OUT/nginx/nginx.conf"
nginx -t -q -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf"
$PIN_PROXY nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" 2>"$OUT/nginx.log" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_http "http://127.0.0.1:$PROXY_PORT/health"
USER_IDS="1..=100" IDLE_TOO=1 suite nginx-proxy_pass "127.0.0.1:$PROXY_PORT" "$NGINX_PID"
stop "$NGINX_PID"

# ---------------------------------------------------------------- alternating rounds (CPU 0)
# One measurement per target is at the mercy of a noisy neighbour on a shared VM. Short rounds of the
# cached auth-proxy and HAProxy, back to back, give the ratio between the two with its spread.
ALT_PORT=$((PROXY_PORT + 1))
RUST_LOG=warn $PIN_PROXY "$PROXY_BIN" --config "$OUT/auth-proxy-cached.toml" 2>"$OUT/alt-auth-proxy.log" &
ALT_PROXY_PID=$!
PIDS+=("$ALT_PROXY_PID")
haproxy_config "$ALT_PORT" "$OUT/haproxy-alt.cfg"
$PIN_PROXY haproxy -db -f "$OUT/haproxy-alt.cfg" 2>"$OUT/haproxy-alt.log" &
ALT_HAPROXY_PID=$!
PIDS+=("$ALT_HAPROXY_PID")
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
wait_http "http://127.0.0.1:$ALT_PORT/health"
echo "==> alternating rounds: auth-proxy-cached and haproxy-jwt_verify (handshakes, messages, one client)"
settle
USER_IDS="1..=100"
for round in $(seq 1 "$ROUNDS"); do
  # Each round measures both proxies back to back; even rounds start with HAProxy, so neither
  # always runs right after the other's burst of handshakes.
  pair=("auth-proxy-cached $ALT_PROXY_PID $PROXY_PORT" "haproxy-jwt_verify $ALT_HAPROXY_PID $ALT_PORT")
  [ $((round % 2)) = 0 ] && pair=("${pair[1]}" "${pair[0]}")
  for scenario in "alt handshakes" "altmsg roundtrip"; do # handshakes, then messages under load
    read -r label what <<<"$scenario"
    for target in "${pair[@]}"; do
      read -r name pid port <<<"$target"
      LABEL=$label-$round measure "$name" "$pid" "$what" \
        --url "ws://127.0.0.1:$port/ws/bench" --connections "$CONNECTIONS" --duration "$ALT_DURATION"
    done
  done
  # Handshake latency and message round trip at one client, with direct in the same round for what
  # each proxy adds.
  for target in "direct $ECHO_PORT" "auth-proxy-cached $PROXY_PORT" "haproxy-jwt_verify $ALT_PORT"; do
    read -r name port <<<"$target"
    LABEL=altlat-$round measure "$name" "" handshakes \
      --url "ws://127.0.0.1:$port/ws/bench" --connections 1 --duration "$ALT_DURATION"
    LABEL=altrt-$round measure "$name" "" roundtrip \
      --url "ws://127.0.0.1:$port/ws/bench" --connections 1 --duration "$ALT_DURATION"
  done
done
stop "$ALT_PROXY_PID"
stop "$ALT_HAPROXY_PID"

# ---------------------------------------------------------------- HTTP keep-alive (wrk, nginx return 200)
# Authenticated HTTP keep-alive against HAProxy and a bare pingora pass-through: deploy/bench/http.sh.
stop "$ECHO_PID"
if command -v wrk >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && ${SUDO:-} apt-get install -y -qq wrk >/dev/null; }; then
  OUT=$OUT ROUNDS=$ROUNDS HTTP_DURATION=$ALT_DURATION CONNECTIONS=$CONNECTIONS "$BENCH/http.sh"
fi

# ---------------------------------------------------------------- the table
MACHINE="$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
COMMAND="deploy/bench/run.sh${1:+ $1} (DURATION=$DURATION CONNECTIONS=$CONNECTIONS IDLE=$IDLE ROUNDS=$ROUNDS ALT_DURATION=$ALT_DURATION)"
python3 "$BENCH/table.py" "$RESULTS" "$MACHINE" "$COMMAND" "$(date -u +%Y-%m-%d)" "${PIN_PROXY:+pinned}" >"$OUT/table.md"
if [ -f "$OUT/http/table.md" ]; then
  {
    echo
    echo "Authenticated HTTP keep-alive (\`deploy/bench/http.sh\`: \`wrk -t1 -c$CONNECTIONS\`, nginx \`return 200\` upstream, $ROUNDS alternating rounds of ${ALT_DURATION}s; ratios are medians of the per-round ratios):"
    echo
    cat "$OUT/http/table.md"
    if [ -f "$OUT/http/idle.jsonl" ]; then
      echo
      echo "RSS per idle tunnel with a minimal upstream (\`deploy/bench/idle_tunnels.py\`):"
      python3 -c 'import json,sys; [print("- %s: %.1f KiB over %d tunnels" % (r["target"], r["kib_per_tunnel"], r["tunnels"])) for r in map(json.loads, open(sys.argv[1]))]' "$OUT/http/idle.jsonl"
    fi
  } >>"$OUT/table.md"
fi
cat "$OUT/table.md"
if [ "$WRITE_MD" = 1 ]; then
  python3 "$BENCH/table.py" --splice BENCHMARKS.md "$OUT/table.md"
  echo "==> BENCHMARKS.md updated"
fi
