#!/usr/bin/env bash
# Checks the deployment files with real tools (there is no Docker engine here):
# the Compose Specification schema, promtool, and scripts/check_deploy.py.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh
venv=target/tools/venv
"$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml
promtool check config prometheus/prometheus.yml
promtool test rules prometheus/alerts_test.yml
"$venv/bin/python" scripts/check_deploy.py
