#!/usr/bin/env bash
# Describes every `sqlx::query!` against a scratch database built from migrations/ and
# writes the offline query data to DIR (default .sqlx, the committed cache).
#   scripts/sqlx-prepare.sh            regenerate .sqlx/
#   scripts/sqlx-prepare.sh --check    fail if .sqlx/ is stale
set -euo pipefail
cd "$(dirname "$0")/.."

server=${SQLX_SERVER_URL:-postgres://postgres@127.0.0.1:5432}
database=orders_sqlx_$$
out=.sqlx
if [ "${1:-}" = --check ]; then
    out=target/sqlx-check
fi

psql "$server/postgres" -qc "CREATE DATABASE $database"
trap 'psql "$server/postgres" -qc "DROP DATABASE IF EXISTS $database" || true' EXIT
for migration in migrations/*.sql; do
    psql "$server/$database" -q -v ON_ERROR_STOP=1 -f "$migration"
done

rm -rf "$out" && mkdir -p "$out"
# The macros write their data only when they run: make sure the crate recompiles.
touch shared/src/lib.rs
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$PWD/$out" DATABASE_URL="$server/$database" \
    cargo check --workspace --all-targets --quiet
touch shared/src/lib.rs

if [ "${1:-}" = --check ]; then
    if ! diff -r .sqlx "$out" >/dev/null; then
        echo "sqlx-prepare.sh: .sqlx/ is stale; run \`make sqlx-prepare\` and commit it" >&2
        diff -r .sqlx "$out" | head -20 >&2
        exit 1
    fi
    echo "sqlx-prepare.sh: .sqlx/ is up to date"
fi
