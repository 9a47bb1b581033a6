#!/usr/bin/env bash
# Two auth-proxy builds side by side, in alternating rounds on one machine: authenticated HTTP
# keep-alive requests and WebSocket handshakes through each, to the same echo upstream (loadgen's),
# with the same cached user. For a change that must cost nothing measurable (a refactor): medians of
# the rounds and the new/old ratio of rate and of proxy CPU per operation.
#
# Usage: deploy/bench/compare.sh OLD_BINARY NEW_BINARY
#   ROUNDS=7 DURATION=5 CONNECTIONS=32 OUT=target/bench-compare   environment knobs
# Each proxy has one worker thread and is pinned to CPU 0 (both are started, and measured one at a
# time); loadgen and the echo upstream share CPU 1. Build loadgen first:
#   cargo build --release -p loadgen
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
OLD=${1:?usage: compare.sh OLD_BINARY NEW_BINARY}
NEW=${2:?usage: compare.sh OLD_BINARY NEW_BINARY}
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
OUT=${OUT:-$ROOT/target/bench-compare}
LOADGEN=$ROOT/target/release/loadgen
[ -x "$LOADGEN" ] || { echo "missing $LOADGEN: cargo build --release -p loadgen" >&2; exit 1; }
SECRET="bench-secret-0123456789abcdef0123456789abcdef"
IDENTITY="bench-identity-0123456789abcdef0123456789abcd"
ECHO_PORT=19100
mkdir -p "$OUT"
if [ "$(nproc)" -ge 2 ]; then PIN_PROXY="taskset -c 0" PIN_LOAD="taskset -c 1"; else PIN_PROXY="" PIN_LOAD=""; fi

python3 - "$OUT/users.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("DROP TABLE IF EXISTS Users")
db.execute("CREATE TABLE Users (id INTEGER PRIMARY KEY, username VARCHAR(255) NOT NULL, isAdmin TINYINT(1) DEFAULT 0, createdAt DATETIME NOT NULL, updatedAt DATETIME NOT NULL)")
db.executemany("INSERT INTO Users VALUES (?, ?, 0, '2025-01-01', '2025-01-01')", [(i, f"user{i}") for i in range(1, 101)])
db.commit()
PY

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

$PIN_LOAD "$LOADGEN" --threads 1 echo-server --listen "127.0.0.1:$ECHO_PORT" 2>"$OUT/echo.log" & PIDS+=($!)

start() { # $1 = name, $2 = binary, $3 = port, $4 = admin port
  cat >"$OUT/$1.toml" <<TOML
listen = "127.0.0.1:$3"
admin_listen = "127.0.0.1:$4"
upstream = "127.0.0.1:$ECHO_PORT"
threads = 1
shutdown_grace_secs = 1
data_dir = "$OUT/$1-data"

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
  RUST_LOG=warn $PIN_PROXY "$2" --config "$OUT/$1.toml" 2>"$OUT/$1.log" &
  PIDS+=($!)
  eval "PID_$1=$!"
  for _ in $(seq 1 200); do
    curl -fs -o /dev/null "http://127.0.0.1:$4/readyz" && return 0
    sleep 0.05
  done
  echo "$1 never became ready:" >&2; cat "$OUT/$1.log" >&2; exit 1
}
start old "$OLD" 18180 19190
start new "$NEW" 18181 19191

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
measure() { # $1 = name, $2 = port, $3 = scenario, $4 = round
  local pid_var="PID_$1" before after line
  before=$(cpu_ticks "${!pid_var}")
  case $3 in
    http) line=$($PIN_LOAD "$LOADGEN" --threads 1 http --json --url "http://127.0.0.1:$2/api/bench" \
      --connections "$CONNECTIONS" --duration "$DURATION" --secret "$SECRET" --user-ids "1..=100") ;;
    handshakes) line=$($PIN_LOAD "$LOADGEN" --threads 1 handshakes --json --url "ws://127.0.0.1:$2/ws/bench" \
      --connections "$CONNECTIONS" --duration "$DURATION" --secret "$SECRET" --user-ids "1..=100") ;;
  esac
  after=$(cpu_ticks "${!pid_var}")
  echo "$line" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
name, scenario, rnd, ticks, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r.update({"build": name, "scenario": scenario, "round": rnd})
if r.get("ok"):
    r["proxy_cpu_us_per_op"] = ticks * 1e6 / hz / r["ok"]
print(json.dumps(r))' "$1" "$3" "$4" "$((after - before))" "$(getconf CLK_TCK)" | tee -a "$OUT/results.jsonl"
}

: >"$OUT/results.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  for scenario in http handshakes; do
    # Alternate which build goes first, so neither always runs after the other's burst.
    if [ $((round % 2)) -eq 1 ]; then order="old new"; else order="new old"; fi
    for build in $order; do
      port=18180; [ "$build" = new ] && port=18181
      measure "$build" "$port" "$scenario" "$round" >/dev/null
    done
  done
done

python3 - "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(build, scenario, key):
    vals = [r[key] for r in rows if r["build"] == build and r["scenario"] == scenario and key in r]
    return statistics.median(vals) if vals else float("nan")
rate = "per_second"
print(f"{'scenario':<12} {'old /s':>10} {'new /s':>10} {'new/old':>8}   {'old µs CPU':>10} {'new µs CPU':>10} {'new/old':>8}")
for s in ("http", "handshakes"):
    o, n = med("old", s, rate), med("new", s, rate)
    oc, nc = med("old", s, "proxy_cpu_us_per_op"), med("new", s, "proxy_cpu_us_per_op")
    print(f"{s:<12} {o:>10.0f} {n:>10.0f} {n / o:>8.3f}   {oc:>10.2f} {nc:>10.2f} {nc / oc:>8.3f}")
print(f"(medians of {max(r['round'] for r in rows)} alternating rounds)")
PY
