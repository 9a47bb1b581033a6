#!/usr/bin/env bash
# Runs every check of the project: formatting, the module structure, clippy, all tests (unit, integration on SQLite and
# PostgreSQL, whole-stack), the long ignored tests, the deploy manifests, a live promtool check of
# both services' metrics and a short run of each fuzz target. This is what CI runs (.ci/run sets REQUIRE_POSTGRES=1 and REQUIRE_NATS=1 so
# PostgreSQL and NATS tests fail instead of skipping when the server is unreachable).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/prereqs.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> module structure (no import circle over 3 modules, at most 12 files at the top of src/)"
python3 scripts/module-graph.py auth-proxy --max-circle 3 --max-top-files 12
python3 scripts/module-graph.py agent-service --max-circle 3 --max-top-files 12
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
echo "==> long tests (#[ignore]d by default: the 70 s idle tunnel)"
cargo test --workspace --locked -- --ignored
echo "==> deploy manifests and live metrics"
scripts/check-metrics.sh
echo "==> fuzz targets (a short run of each, from the committed corpus)"
scripts/fuzz.sh
