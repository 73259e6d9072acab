#!/usr/bin/env bash
# Runs every process of order-service against the local services, in the foreground:
# api, outbox-relay, saga-worker, and with `--demo` the customer simulator too.
# Ctrl-C (or any one process exiting) stops them all. Used by `make run` and `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --examples
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
target/debug/saga-worker &
pids+=($!)
if [ "${1:-}" = --demo ]; then
    target/debug/customer-simulator &
    pids+=($!)
fi

# One process ending (a crash, a bad variable) ends the run, visibly.
wait -n
