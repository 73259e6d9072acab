#!/usr/bin/env bash
# The broker-facing tests again, on RabbitMQ 4 (scripts/rabbitmq4.sh): the broker fault
# tests, the relay's, the saga worker's and the DLQ tool's, answering a saga from the admin
# panel (port 15673), the broker-wide ones (a memory
# alarm) one at a time, and the short chaos run. `make test` calls it after the same tests
# passed on the machine's RabbitMQ 3.10.
#
# Where the 4.x node cannot be had (not root, no Debian mirror), it says so on one line
# that starts "SKIPPED: RabbitMQ 4" and exits 0: the 3.10 run stands alone, never silently.
set -euo pipefail
cd "$(dirname "$0")/.."

set +e
url=$(scripts/rabbitmq4.sh | tail -n 1)
status=$?
set -e
if [ "$status" -eq 3 ]; then
    echo "SKIPPED: RabbitMQ 4 tests (scripts/rabbitmq4.sh could not provide a 4.x node; its reason is above)" >&2
    exit 0
elif [ "$status" -ne 0 ]; then
    echo "test-rabbitmq4.sh: scripts/rabbitmq4.sh failed ($status)" >&2
    exit "$status"
fi
version=$(scripts/rabbitmq4.sh ctl -q eval 'rabbit_misc:version().' | tr -d '"')
echo "test-rabbitmq4.sh: RabbitMQ $version at $url" >&2

export TEST_AMQP_URL="$url"
export TEST_RABBITMQCTL="$PWD/scripts/rabbitmq4.sh ctl"
export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export TEST_RABBITMQ_MANAGEMENT_URL="http://127.0.0.1:15673/"
cargo test --workspace --test integration -- broker_faults:: relay:: saga:: rabbitmq_admin:: operators:: silent_networks::rabbitmq --include-ignored --skip broker_wide
cargo test --workspace --test integration -- broker_wide --ignored --test-threads=1
CHAOS_SHORT=1 CHAOS_AMQP_PORT=5673 CHAOS_RABBITMQCTL="$PWD/scripts/rabbitmq4.sh ctl" \
    target/tools/venv/bin/python scripts/chaos.py
