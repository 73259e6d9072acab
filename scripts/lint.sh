#!/usr/bin/env bash
# Lints what is not Rust: scripts/*.py with ruff (scripts/ruff.toml), checked and
# formatted (`target/tools/lint/bin/ruff format scripts` formats them), and the shell
# scripts (scripts/*.sh, scripts/previous-release and .ci/run) with shellcheck. The
# tools are pinned in scripts/tools.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh
lint=target/tools/lint/bin
# Its cache under target/, not beside the sources.
export RUFF_CACHE_DIR=target/tools/ruff-cache
"$lint/ruff" check scripts
"$lint/ruff" format --check scripts
"$lint/shellcheck" --external-sources scripts/*.sh scripts/previous-release .ci/run
echo "lint.sh: ruff and shellcheck find nothing"
