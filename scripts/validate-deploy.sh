#!/usr/bin/env bash
# Validates what deploy/ ships, offline:
#  - renders each kustomization (deploy/k8s/base, monitoring, overlays/*) and validates every
#    built-in resource against the Kubernetes schemas with kubernetes-validate (strict);
#    the ServiceMonitor (a CRD) is checked for its required fields;
#  - with --metrics-url URL (repeatable), checks each live /metrics page with `promtool check metrics`.
# Installs what it needs (a Python venv with kubernetes-validate; Debian's prometheus for promtool).
set -euo pipefail
cd "$(dirname "$0")/.."

urls=()
while [ $# -gt 0 ]; do
  case "$1" in
    --metrics-url) urls+=("$2"); shift 2 ;;
    *) echo "usage: $0 [--metrics-url URL]..." >&2; exit 2 ;;
  esac
done

K8S_VERSION=${K8S_VERSION:-1.30.0}
VENV=${VALIDATE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/fluxion-edge/validate-venv}
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  echo "==> installing kubernetes-validate into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet kubernetes-validate pyyaml
fi
PY="$VENV/bin/python"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for k in deploy/k8s/base deploy/k8s/monitoring deploy/k8s/overlays/*/; do
  k=${k%/}
  name=$(echo "$k" | tr '/' '_')
  echo "==> $k"
  "$PY" deploy/tools/render_kustomize.py "$k" > "$out/$name.yaml"
  # One file per built-in resource; CRDs are checked separately.
  "$PY" - "$out/$name.yaml" "$out/$name" <<'PY'
import os, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
os.makedirs(sys.argv[2], exist_ok=True)
for i, d in enumerate(docs):
    if d["kind"] == "ServiceMonitor":
        spec = d.get("spec", {})
        assert d["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion"
        assert spec.get("selector", {}).get("matchLabels"), "ServiceMonitor needs spec.selector.matchLabels"
        assert spec.get("endpoints") and all(e.get("port") for e in spec["endpoints"]), "ServiceMonitor endpoints need a port"
        print(f"    ok  ServiceMonitor/{d['metadata']['name']} (required fields)")
        continue
    with open(os.path.join(sys.argv[2], f"{i:02d}-{d['kind']}.yaml"), "w") as f:
        yaml.safe_dump(d, f)
PY
  "$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$out/$name"/*.yaml
done

if [ ${#urls[@]} -gt 0 ]; then
  if ! command -v promtool >/dev/null 2>&1; then
    echo "==> installing promtool (Debian package prometheus)"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
  for url in "${urls[@]}"; do
    echo "==> promtool check metrics $url"
    curl -fsS "$url" | promtool check metrics
  done
fi
echo "deploy validation passed"
