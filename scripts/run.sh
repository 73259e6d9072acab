#!/usr/bin/env bash
# Runs every process of order-service against the local services, in the foreground.
# Ctrl-C (or any one process exiting) stops them all. Used by `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --bins
export LOG_FORMAT=${LOG_FORMAT:-pretty}

pids=()
stop() {
    trap - INT TERM EXIT
    kill "${pids[@]}" 2>/dev/null || true
    wait || true
}
trap stop INT TERM EXIT

target/debug/api &
pids+=($!)
target/debug/outbox-relay &
pids+=($!)

# One process ending (a crash, a bad variable) ends the run, visibly.
wait -n
