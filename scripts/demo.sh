#!/usr/bin/env bash
# Starts the whole stack on embedded defaults: a demo News Nexus SQLite database (two users), agent-service
# with the built-in offline LLM on 127.0.0.1:8000, and auth-proxy on :8080 (admin :9090) in front of it.
# Prints a token for user 1 and a command to chat through the edge. Ctrl-C stops both cleanly.
#
# Knobs (environment): PROFILE=release|debug (default release), PROXY_PORT (8080), ADMIN_PORT (9090),
# AGENT_PORT (8000), DEMO_DIR (.data/demo).
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-release}
PROXY_PORT=${PROXY_PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9090}
AGENT_PORT=${AGENT_PORT:-8000}
DEMO_DIR=${DEMO_DIR:-.data/demo}

scripts/prereqs.sh
echo "==> building auth-proxy and agent-service ($PROFILE)"
if [ "$PROFILE" = release ]; then
  cargo build --release --locked -p auth-proxy -p agent-service
else
  cargo build --locked -p auth-proxy -p agent-service
fi
BIN="${CARGO_TARGET_DIR:-target}/$PROFILE"

mkdir -p "$DEMO_DIR"
DB="$DEMO_DIR/newsnexus.db"
rm -f "$DB" "$DB-shm" "$DB-wal"
"$BIN/agent-service" demo-db "$DB"

# Fresh secrets for this demo run; real deployments bring their own.
secret() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
export JWT_SECRET IDENTITY_SECRET
JWT_SECRET=$(secret)
IDENTITY_SECRET=$(secret)
export DATABASE_URL="sqlite://$PWD/$DB"

pids=()
stopping=0
stop() {
  stopping=1
  trap - INT TERM EXIT
  echo
  echo "==> stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "==> stopped"
}
trap stop INT TERM EXIT

wait_for() { # url, name
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "error: $2 did not become ready ($1)" >&2
  exit 1
}

AGENT_LISTEN="127.0.0.1:$AGENT_PORT" LLM_PROVIDER=offline AGENT_DATA_DIR="$DEMO_DIR/agent" \
  RUST_LOG=${RUST_LOG:-info} "$BIN/agent-service" >"$DEMO_DIR/agent-service.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$AGENT_PORT/health" agent-service

AUTH_PROXY_LISTEN="0.0.0.0:$PROXY_PORT" AUTH_PROXY_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT" \
  AUTH_PROXY_DATA_DIR="$DEMO_DIR/edge" AUTH_PROXY_UPSTREAM="127.0.0.1:$AGENT_PORT" RUST_LOG=${RUST_LOG:-info} \
  "$BIN/auth-proxy" >"$DEMO_DIR/auth-proxy.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$ADMIN_PORT/readyz" auth-proxy

TOKEN=$("$BIN/auth-proxy" mint-token --user-id 1)
CLIENT_ID=$(cat /proc/sys/kernel/random/uuid 2>/dev/null || echo demo-client)
cat <<MSG

  The stack is up.
    edge (auth-proxy)     http://127.0.0.1:$PROXY_PORT   (metrics, /healthz, /readyz, /status on 127.0.0.1:$ADMIN_PORT)
    agent-service         http://127.0.0.1:$AGENT_PORT   (only the proxy should talk to it)
    demo database         $DB (users 1 'ada', admin, and 2 'grace')
    logs                  $DEMO_DIR/auth-proxy.log, $DEMO_DIR/agent-service.log

  A token for user 1 (ada):
    $TOKEN

  Chat through the edge, with the status log printed as it arrives (in another terminal):
    $BIN/agent-service chat 'ws://127.0.0.1:$PROXY_PORT/ws/$CLIENT_ID?token=$TOKEN&provider=offline' \\
      --message 'How many approved articles are there?' --message '/sql SELECT COUNT(*) FROM Articles'

  Or check the edge by hand:
    curl -s http://127.0.0.1:$PROXY_PORT/api/info
    curl -s -H 'Authorization: Bearer $TOKEN' http://127.0.0.1:$PROXY_PORT/api/chat/sessions

  Ctrl-C stops both.
MSG
wait -n "${pids[@]}" || true
[ "$stopping" = 1 ] || echo "a service exited; see the logs in $DEMO_DIR" >&2
