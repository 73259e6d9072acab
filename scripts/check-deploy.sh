#!/usr/bin/env bash
# Checks the deployment files with real tools (there is no Docker engine and no cluster
# here): the Compose Specification schema and Compose v2 itself, promtool, every
# Kubernetes overlay built by kubectl kustomize and checked by kubernetes-validate
# --strict, the operators' CRD schemas (KEDA, CloudNativePG, RabbitMQ) and checkov, and
# scripts/check_deploy.py. The wiring of the manifests to the code (variables, probes,
# triggers, the operators' Secrets) is checked by shared/tests/integration/deploy.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh
venv=target/tools/venv
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml
# Compose v2 parses and interpolates the file as `docker compose up` would (no engine).
"$venv/bin/docker-compose" -f compose.yaml --profile demo config --quiet
echo "check-deploy: $("$venv/bin/docker-compose" version) accepts compose.yaml"
promtool check config prometheus/prometheus.yml
promtool test rules prometheus/alerts_test.yml
"$venv/bin/python" scripts/check_deploy.py

# Kubernetes: every overlay builds, every built-in kind validates strictly, the
# operators' objects validate against their CRDs, and checkov finds nothing (skips are
# justified in checkov.io/skip annotations).
built=target/kubernetes
rm -rf "$built" && mkdir -p "$built"
overlays=0
for overlay in deploy/kubernetes/overlays/*/; do
    name=$(basename "$overlay")
    "$venv/bin/kubectl" kustomize "$overlay" > "$built/$name.yaml"
    "$venv/bin/kubernetes-validate" --strict --quiet --no-warn -k 1.32.0 "$built/$name.yaml"
    overlays=$((overlays + 1))
done
"$venv/bin/python" scripts/check_crds.py "$built"/*.yaml
target/tools/checkov/bin/checkov --skip-download --framework kubernetes -d "$built" --compact --quiet
echo "check-deploy: $overlays overlays built ($("$venv/bin/kubectl" version --client | head -1)), validated and clean"
