#!/usr/bin/env bash
# Starts both services (already built binaries, default target/debug) on free loopback ports over a
# demo database, makes one request through the edge so the metric families have samples, and checks
# both /metrics pages with promtool (through scripts/validate-deploy.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/debug}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
AGENT=$(port); EDGE=$(port); ADMIN=$(port)
"$BIN/agent-service" demo-db "$work/nn.db"
export JWT_SECRET=check-metrics-jwt-secret-0123456789abcdef IDENTITY_SECRET=check-metrics-identity-secret-0123456789
export DATABASE_URL="sqlite://$work/nn.db"
AGENT_LISTEN=127.0.0.1:$AGENT AGENT_DATA_DIR=$work/agent "$BIN/agent-service" >"$work/agent.log" 2>&1 & pids+=($!)
AUTH_PROXY_LISTEN=127.0.0.1:$EDGE AUTH_PROXY_ADMIN_LISTEN=127.0.0.1:$ADMIN AUTH_PROXY_UPSTREAM=127.0.0.1:$AGENT \
  "$BIN/auth-proxy" >"$work/proxy.log" 2>&1 & pids+=($!)
for _ in $(seq 1 300); do curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN/readyz" 2>/dev/null && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null || { cat "$work/proxy.log" "$work/agent.log"; exit 1; }
TOKEN=$("$BIN/auth-proxy" mint-token --user-id 1)
"$BIN/agent-service" chat "ws://127.0.0.1:$EDGE/ws/metrics-check?token=$TOKEN" -m "How many approved articles are there?" >/dev/null
curl -fsS -o /dev/null "http://127.0.0.1:$EDGE/api/info"
scripts/validate-deploy.sh --metrics-url "http://127.0.0.1:$ADMIN/metrics" --metrics-url "http://127.0.0.1:$AGENT/metrics"
