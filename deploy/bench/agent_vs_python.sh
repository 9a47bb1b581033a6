#!/usr/bin/env bash
# Our stack (auth-proxy edge + agent-service) against the Python Fluxion00API it replaces, on one machine,
# behind the same fake LLM (Ollama's wire format, a plain answer after about 1 ms), with the same SQLite
# News Nexus database and the same HS256 secret (issue 24).
#
# Usage: deploy/bench/agent_vs_python.sh [--quick] PATH_TO_FLUXION00API
#   PATH_TO_FLUXION00API   a Fluxion00API checkout (a folder with run.py; a git work tree names its commit)
#                          or a bare git repository (its HEAD is unpacked)
#   --quick                a smoke run: 2 rounds, 10 sequential messages, 200 connects, no 9,000-connection idle run
#
# What it does:
#   1. copies Fluxion00API outside this repository ($WORK, default /tmp/agent_vs_python: none of its code
#      ever lands here), writes its .env, and builds a Python venv from PyPI with the versions its
#      requirements.txt pins (cached by the file's hash);
#   2. builds our release binaries (auth-proxy, agent-service, loadgen) and the News Nexus database
#      from agent-service/demo/newsnexus-sqlite.sql (the fixture the repository's tests load);
#   3. starts the fake LLM (`loadgen fake-ollama`: POST /api/chat for agent-service, POST /api/generate
#      for Fluxion00API, GET /api/tags);
#   4. runs ROUNDS rounds; each round starts each stack fresh (ours first in odd rounds, Python first in
#      even ones), measures it, and stops it:
#        idle      N chat connections, each past its welcome, held idle: RSS growth per connection
#        seq       one client, SEQ_MESSAGES messages one after the other: answer latency, status log
#        welcome   WELCOMES connect -> welcome -> clean close, one at a time: connections/s, CPU each
#        clients   CLIENTS clients x CLIENT_MESSAGES messages: answers/s, CPU per answer
#      then (full run, or IDLE_BIG=1) one idle run per stack with IDLE_BIG_N connections;
#   5. prints the table (deploy/bench/agent_vs_python/table.py) and writes it to $OUT/agent_vs_python.md.
# Servers are pinned to CPU 0, loadgen and the fake LLM to CPU 1 (when there are 2 CPUs or more).
# CPU per operation: utime+stime of the server processes (/proc/PID/stat) over the run / operations.
#
# Environment knobs (defaults; --quick changes those marked *):
#   ROUNDS=5*  SEQ_MESSAGES=30*  WELCOMES=500*  CLIENTS=20  CLIENT_MESSAGES=10  IDLE=1000  IDLE_HOLD=5*
#   IDLE_BIG=1* (0 with --quick)  IDLE_BIG_N=9000  LLM_DELAY_US=1000  PYTHON=python3.11
#   OUT=target/bench-agent  WORK=/tmp/agent_vs_python  LOG_LEVEL=info (both stacks' log level)
#   AGENT_BIN=target/release/agent-service (another build to measure behind the edge, e.g. a before/after)
set -euo pipefail

usage() { sed -n '6,9p' "$0" | sed 's/^# \{0,1\}//'; }
QUICK=0
SRC=""
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h | --help) usage && exit 0 ;;
    -*) echo "unknown option $arg" >&2 && usage >&2 && exit 2 ;;
    *) SRC=$arg ;;
  esac
done
if [ -z "$SRC" ] || [ ! -d "$SRC" ]; then
  usage >&2
  exit 2
fi
SRC=$(cd "$SRC" && pwd)
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
HERE=$ROOT/deploy/bench/agent_vs_python

if [ "$QUICK" = 1 ]; then
  : "${ROUNDS:=2}" "${SEQ_MESSAGES:=10}" "${WELCOMES:=200}" "${IDLE_HOLD:=2}" "${IDLE_BIG:=0}"
fi
ROUNDS=${ROUNDS:-5}
SEQ_MESSAGES=${SEQ_MESSAGES:-30}
WELCOMES=${WELCOMES:-500}
CLIENTS=${CLIENTS:-20}
CLIENT_MESSAGES=${CLIENT_MESSAGES:-10}
IDLE=${IDLE:-1000}
IDLE_HOLD=${IDLE_HOLD:-5}
IDLE_BIG=${IDLE_BIG:-1}
IDLE_BIG_N=${IDLE_BIG_N:-9000}
LLM_DELAY_US=${LLM_DELAY_US:-1000}
PYTHON=${PYTHON:-python3.11}
OUT=${OUT:-$ROOT/target/bench-agent}
WORK=${WORK:-${TMPDIR:-/tmp}/agent_vs_python}
LOG_LEVEL=${LOG_LEVEL:-info}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
WORK=$(cd "$WORK" && pwd)
case "$WORK/" in
  "$ROOT"/*) echo "error: WORK=$WORK is inside this repository; Fluxion00API's code must stay outside it" >&2 && exit 2 ;;
esac
case "$SRC/" in
  "$WORK"/*) echo "error: $SRC is inside WORK=$WORK, which this script empties; give the original checkout" >&2 && exit 2 ;;
esac

# Fixed secrets: both stacks check the same tokens; the agent trusts only the edge's signed identity.
SECRET="bench-jwt-secret-0123456789abcdef0123456789abcdef"
IDENTITY="bench-identity-secret-0123456789abcdef0123456789"
USER_IDS="1..=2" # the fixture's two users, round-robin
LLM_PORT=19434 AGENT_PORT=18000 EDGE_PORT=18080 ADMIN_PORT=19090 PY_PORT=18001
HZ=$(getconf CLK_TCK)

if [ "$(nproc)" -ge 2 ]; then
  PIN_SERVER="taskset -c 0" PIN_LOAD="taskset -c 1"
  PINNING="Servers pinned to CPU 0; loadgen (one thread) and the fake LLM on CPU 1."
else
  PIN_SERVER="" PIN_LOAD=""
  PINNING="One CPU: nothing pinned."
fi
# 9,000 connections take 9,000 descriptors in loadgen, the agent and Python, 18,000 in the edge.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# ---------------------------------------------------------------- processes: started here, all stopped on exit
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do stop "$p"; done
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# alive PID: the process runs (an exited child not yet waited for is a zombie, which kill -0 still finds).
alive() {
  [ -r "/proc/$1/stat" ] && [ "$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}

# stop PID: SIGTERM, then SIGKILL if it still runs after 10 s; reaped and forgotten.
stop() {
  local pid=$1 rest=() p
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    alive "$pid" || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  # Forget it, so the exit trap never signals a pid the system has since reused.
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || rest+=("$p"); done
  PIDS=("${rest[@]}")
}

# wait_http URL PID LOG: until URL answers 2xx (30 s at most), failing early if PID exits.
wait_http() {
  for _ in $(seq 1 300); do
    curl -fs -o /dev/null --max-time 2 "$1" && return 0
    if ! alive "$2"; then
      echo "error: the process behind $1 exited; the end of $3:" >&2
      tail -n 30 "$3" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "error: $1 did not answer within 30 s; the end of $3:" >&2
  tail -n 30 "$3" >&2
  exit 1
}

# cpu_ticks PID...: utime + stime of the processes, in clock ticks (fields 14 and 15 of /proc/PID/stat,
# counted after the command name, which may hold spaces).
cpu_ticks() {
  local total=0 p
  for p in "$@"; do
    total=$((total + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

# busy_percent: how busy all CPUs are over 2 s, in percent (from /proc/stat: everything but idle and iowait).
busy_percent() {
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)
  sleep 2
  b=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6}' /proc/stat)
  echo "$a $b" | awk '{t = $3 - $1; i = $4 - $2; print (t > 0 ? int(100 * (t - i) / t + 0.5) : 0)}'
}

# ---------------------------------------------------------------- 1. Fluxion00API, outside the repository
echo "==> Fluxion00API from $SRC"
PYSRC=$WORK/fluxion00api
rm -rf "$PYSRC"
mkdir -p "$PYSRC"
if [ -f "$SRC/run.py" ]; then
  # A checkout: its files as they are (local changes included, and said so), less git, .env and venvs.
  tar -C "$SRC" --exclude=./.git --exclude=./.env --exclude=./venv --exclude=./.venv --exclude=__pycache__ -cf - . |
    tar -x -C "$PYSRC"
  if COMMIT=$(git -C "$SRC" rev-parse HEAD 2>/dev/null); then
    COMMIT_SUBJECT=$(git -C "$SRC" log -1 --format='%cs, %s' HEAD)
    if [ -n "$(git -C "$SRC" status --porcelain 2>/dev/null)" ]; then COMMIT="$COMMIT + local changes"; fi
  else
    COMMIT="unknown" COMMIT_SUBJECT="not a git checkout"
  fi
elif COMMIT=$(git --git-dir="$SRC" rev-parse --verify -q 'HEAD^{commit}' 2>/dev/null); then
  # A bare git directory (such as a mirror): its HEAD.
  COMMIT_SUBJECT=$(git --git-dir="$SRC" log -1 --format='%cs, %s' HEAD)
  git --git-dir="$SRC" archive HEAD | tar -x -C "$PYSRC"
else
  echo "error: $SRC is neither a Fluxion00API checkout (no run.py) nor a git directory" >&2
  exit 2
fi
for f in run.py requirements.txt src/api/app.py src/api/websocket.py src/llm/ollama_client.py; do
  [ -f "$PYSRC/$f" ] || { echo "error: $SRC has no $f: not Fluxion00API?" >&2 && exit 2; }
done
COMMIT_SUBJECT=${COMMIT_SUBJECT//|/\/}
echo "    commit $COMMIT ($COMMIT_SUBJECT)"

# The venv, from PyPI with requirements.txt's pins; reused while requirements.txt is unchanged.
VENV=$WORK/venv-$(sha256sum "$PYSRC/requirements.txt" | cut -c1-16)
if [ ! -f "$VENV/.complete" ]; then
  echo "==> building the Python venv ($PYTHON, $PYSRC/requirements.txt)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$PYSRC/requirements.txt"
  touch "$VENV/.complete"
fi
PY_VERSIONS=$("$VENV/bin/python" - <<'EOF'
import sys
from importlib.metadata import version
names = ["fastapi", "uvicorn", "websockets", "uvloop", "httptools", "httpx", "pyjwt"]
print("Python %s, " % sys.version.split()[0] + ", ".join("%s %s" % (n, version(n)) for n in names))
EOF
)
echo "    $PY_VERSIONS"
# Fluxion00API makes a new httpx.AsyncClient for every LLM call (src/llm/ollama_client.py); what one
# costs here, in the server's environment, goes into the notes under the table.
HTTPX_CLIENT_MS=$(cd "$PYSRC" && env -i PATH="$VENV/bin:$PATH" HOME="$HOME" $PIN_SERVER "$VENV/bin/python" -c '
import time, httpx
httpx.AsyncClient()
t = time.process_time()
for _ in range(10):
    httpx.AsyncClient(timeout=120.0)
print("%.1f" % ((time.process_time() - t) * 100))')
echo "    one httpx.AsyncClient(): $HTTPX_CLIENT_MS ms"

# ---------------------------------------------------------------- 2. our binaries, the database
echo "==> building release binaries"
cargo build --release --locked -p auth-proxy -p agent-service -p loadgen
BIN=$ROOT/target/release
LOADGEN=$BIN/loadgen
OURS_COMMIT=$(git rev-parse --short HEAD)
if [ -n "$(git status --porcelain -- agent-service auth-proxy shared db loadgen Cargo.lock 2>/dev/null)" ]; then
  OURS_COMMIT="$OURS_COMMIT + local changes"
fi
# AGENT_BIN: another agent-service binary to measure behind this edge (an earlier commit's build,
# for a before/after); named in the table.
AGENT_BIN=${AGENT_BIN:-$BIN/agent-service}
if [ "$AGENT_BIN" != "$BIN/agent-service" ]; then
  OURS_COMMIT="$OURS_COMMIT, agent-service from $AGENT_BIN"
fi

RESULTS=$OUT/results.jsonl
: >"$RESULTS"
rm -f "$OUT"/*.log
DB=$OUT/newsnexus.db
rm -f "$DB" "$DB-wal" "$DB-shm"
python3 -c 'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.executescript(open(sys.argv[2]).read()); c.close()' \
  "$DB" "$ROOT/agent-service/demo/newsnexus-sqlite.sql"

# Fluxion00API's settings: its .env (load_dotenv(override=True) reads it before anything else).
cat >"$PYSRC/.env" <<EOF
PATH_TO_DATABASE=$(dirname "$DB")
NAME_DB=$(basename "$DB")
JWT_SECRET=$SECRET
URL_BASE_OLLAMA=http://127.0.0.1:$LLM_PORT
HOST=127.0.0.1
PORT=$PY_PORT
RELOAD=false
EOF

# ---------------------------------------------------------------- 3. the fake LLM (CPU 1)
$PIN_LOAD "$LOADGEN" --threads 1 fake-ollama --listen "127.0.0.1:$LLM_PORT" --delay-us "$LLM_DELAY_US" \
  2>"$OUT/fake-ollama.log" &
LLM_PID=$!
PIDS+=("$LLM_PID")
wait_http "http://127.0.0.1:$LLM_PORT/api/tags" "$LLM_PID" "$OUT/fake-ollama.log"

# ---------------------------------------------------------------- the two stacks (CPU 0)
cat >"$OUT/auth-proxy.toml" <<EOF
listen = "127.0.0.1:$EDGE_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
upstream = "127.0.0.1:$AGENT_PORT"
data_dir = "$OUT/edge-data"
threads = 1
shutdown_grace_secs = 1

[jwt]
secret = "$SECRET"

[users]
database_url = "sqlite://$DB"

[identity]
secret = "$IDENTITY"

# One loadgen client holds thousands of tunnels from one address.
[connections]
max_per_ip = 100000
EOF

STACK_PIDS="" # the server processes of the stack that is up, for CPU and RSS
start_ours() {
  rm -rf "$OUT/agent-data" "$OUT/edge-data"
  # The agent: Ollama provider against the fake LLM, the same database, the edge's identity key. The
  # per-user connection cap is lifted: the load comes from two users.
  env -i PATH="$PATH" HOME="$HOME" RUST_LOG="$LOG_LEVEL" \
    AGENT_LISTEN="127.0.0.1:$AGENT_PORT" IDENTITY_SECRET="$IDENTITY" DATABASE_URL="sqlite://$DB" \
    LLM_PROVIDER=ollama URL_BASE_OLLAMA="http://127.0.0.1:$LLM_PORT" AGENT_DATA_DIR="$OUT/agent-data" \
    AGENT_MAX_CONNECTIONS_PER_USER=100000 AGENT_DRAIN_GRACE_SECS=1 \
    $PIN_SERVER "$AGENT_BIN" >>"$OUT/agent-service.log" 2>&1 &
  AGENT_PID=$!
  PIDS+=("$AGENT_PID")
  wait_http "http://127.0.0.1:$AGENT_PORT/health" "$AGENT_PID" "$OUT/agent-service.log"
  env -i PATH="$PATH" HOME="$HOME" RUST_LOG="$LOG_LEVEL" \
    $PIN_SERVER "$BIN/auth-proxy" --config "$OUT/auth-proxy.toml" >>"$OUT/auth-proxy.log" 2>&1 &
  EDGE_PID=$!
  PIDS+=("$EDGE_PID")
  wait_http "http://127.0.0.1:$ADMIN_PORT/readyz" "$EDGE_PID" "$OUT/auth-proxy.log"
  STACK_PIDS="$EDGE_PID $AGENT_PID" # edge first: table.py reads rss_by_pid in this order
  STACK_URL="ws://127.0.0.1:$EDGE_PORT/ws/{uuid}?provider=ollama&model=mistral:instruct"
}
stop_ours() {
  stop "$EDGE_PID"
  stop "$AGENT_PID"
}

start_python() {
  # `python run.py` as its README says, from the venv: one uvicorn worker, reload off (.env).
  (cd "$PYSRC" && exec env -i PATH="$VENV/bin:$PATH" HOME="$HOME" \
    $PIN_SERVER "$VENV/bin/python" run.py) >>"$OUT/python.log" 2>&1 &
  PY_PID=$!
  PIDS+=("$PY_PID")
  wait_http "http://127.0.0.1:$PY_PORT/health" "$PY_PID" "$OUT/python.log"
  STACK_PIDS="$PY_PID"
  STACK_URL="ws://127.0.0.1:$PY_PORT/ws/{uuid}?provider=ollama&model=mistral:instruct"
}
stop_python() { stop "$PY_PID"; }

# measure STACK LABEL ROUND LOADGEN-ARGS...: one loadgen run against the stack that is up, with the
# servers' CPU and the fake LLM's calls around it, appended to results.jsonl by record.py.
measure() {
  local stack=$1 label=$2 round=$3 line before after llm_before llm_after p
  shift 3
  # shellcheck disable=SC2086 # STACK_PIDS is a list
  before=$(cpu_ticks $STACK_PIDS)
  llm_before=$(curl -fs --max-time 5 "http://127.0.0.1:$LLM_PORT/stats" || echo '{}')
  if ! line=$($PIN_LOAD "$LOADGEN" --threads 1 "$@" --url "$STACK_URL" --json --secret "$SECRET" \
    --user-ids "$USER_IDS"); then
    echo "    warning: $stack $label round $round: loadgen failed (see above); no result" >&2
    return 0
  fi
  for p in $STACK_PIDS; do
    alive "$p" || { echo "error: server pid $p ($stack) died during $label; see the logs in $OUT" >&2 && exit 1; }
  done
  # shellcheck disable=SC2086
  after=$(cpu_ticks $STACK_PIDS)
  llm_after=$(curl -fs --max-time 5 "http://127.0.0.1:$LLM_PORT/stats" || echo '{}')
  python3 "$HERE/record.py" --results "$RESULTS" --stack "$stack" --label "$label" --round "$round" \
    --ticks $((after - before)) --hz "$HZ" --llm-before "$llm_before" --llm-after "$llm_after" <<<"$line"
}

# idle_pids: the --pid arguments for the stack that is up.
idle_pids() {
  local p
  for p in $STACK_PIDS; do printf -- '--pid %s ' "$p"; done
}

# suite STACK ROUND: the four measurements on a freshly started stack.
suite() {
  local stack=$1 round=$2
  "start_$stack"
  echo "==> round $round: $stack (pids $STACK_PIDS)"
  # First, on the fresh processes: N connections past their welcome, held idle (50 warm-up ones
  # opened before the first RSS reading). Each connection is then probed with a ping frame.
  # shellcheck disable=SC2046
  measure "$stack" idle "$round" idle --connections "$IDLE" --duration "$IDLE_HOLD" --first-frame \
    --warmup 50 --probe '{"type":"ping"}' $(idle_pids)
  measure "$stack" seq "$round" chat --connections 1 --messages "$SEQ_MESSAGES" --duration 300
  measure "$stack" welcome "$round" welcome --connections 1 --count "$WELCOMES" --duration 300
  measure "$stack" clients "$round" chat --connections "$CLIENTS" --messages "$CLIENT_MESSAGES" \
    --duration 300
  "stop_$stack"
}

# ---------------------------------------------------------------- 4. alternating rounds
# Other work on the machine (a cargo build, say) shows in every figure: sample how busy the CPUs are
# with nothing of ours running, before the rounds and after them, and say so in the table.
BUSY_BEFORE=$(busy_percent)
if [ "$BUSY_BEFORE" -gt 10 ]; then
  echo "    warning: the CPUs are ${BUSY_BEFORE}% busy before the rounds: the figures will be noisy"
fi
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="ours python"; else order="python ours"; fi
  for stack in $order; do suite "$stack" "$round"; done
done
if [ "$IDLE_BIG" = 1 ]; then
  for stack in ours python; do
    "start_$stack"
    echo "==> $stack: $IDLE_BIG_N idle chat connections"
    # shellcheck disable=SC2046
    measure "$stack" idle-big 1 idle --connections "$IDLE_BIG_N" --duration "$IDLE_HOLD" --first-frame \
      --warmup 50 --probe '{"type":"ping"}' $(idle_pids)
    "stop_$stack"
  done
fi

# ---------------------------------------------------------------- 5. the table
BUSY_AFTER=$(busy_percent)
MACHINE="$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
COMMAND="deploy/bench/agent_vs_python.sh$([ "$QUICK" = 1 ] && echo ' --quick' || true) (ROUNDS=$ROUNDS SEQ_MESSAGES=$SEQ_MESSAGES WELCOMES=$WELCOMES CLIENTS=$CLIENTS CLIENT_MESSAGES=$CLIENT_MESSAGES IDLE=$IDLE IDLE_BIG=$IDLE_BIG)"
# What the table says about the run, handed over through the environment (no quoting to get wrong).
M_DATE=$(date -u +%Y-%m-%d) M_COMMAND=$COMMAND M_COMMIT=$COMMIT M_SUBJECT=$COMMIT_SUBJECT M_PYTHON=$PY_VERSIONS \
  M_OURS=$OURS_COMMIT M_MACHINE=$MACHINE M_PINNING=$PINNING M_HZ=$HZ M_HTTPX=$HTTPX_CLIENT_MS \
  M_BUSY="${BUSY_BEFORE}% / ${BUSY_AFTER}%" \
  ROUNDS=$ROUNDS SEQ_MESSAGES=$SEQ_MESSAGES WELCOMES=$WELCOMES CLIENTS=$CLIENTS CLIENT_MESSAGES=$CLIENT_MESSAGES \
  IDLE=$IDLE IDLE_BIG_N=$IDLE_BIG_N LLM_DELAY_US=$LLM_DELAY_US python3 -c '
import json, os, sys
e = os.environ
settings = ["ROUNDS", "SEQ_MESSAGES", "WELCOMES", "CLIENTS", "CLIENT_MESSAGES", "IDLE", "IDLE_BIG_N", "LLM_DELAY_US"]
json.dump({"date": e["M_DATE"], "command": e["M_COMMAND"], "commit": e["M_COMMIT"],
           "commit_subject": e["M_SUBJECT"], "python": e["M_PYTHON"], "ours_commit": e["M_OURS"],
           "machine": e["M_MACHINE"], "pinning": e["M_PINNING"], "hz": int(e["M_HZ"]),
           "httpx_client_ms": float(e["M_HTTPX"]), "busy": e["M_BUSY"],
           "settings": {k: int(e[k]) for k in settings}}, open(sys.argv[1], "w"), indent=1)
' "$OUT/meta.json"
python3 "$HERE/table.py" "$RESULTS" "$OUT/meta.json" >"$OUT/agent_vs_python.md"
echo
cat "$OUT/agent_vs_python.md"
echo
echo "==> written to $OUT/agent_vs_python.md (raw results: $RESULTS, logs: $OUT/*.log)"
