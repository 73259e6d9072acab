# order-service. `make run` starts the system, `make test` runs every test; both start
# PostgreSQL, Redis and RabbitMQ first if they are not up (scripts/services.sh).

DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/orders
# `#[sqlx::test]` creates a database per test through this server's maintenance database.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres

export DATABASE_URL

.PHONY: bench chaos check help run run-demo up demo down clean logs ps test services migrate fmt lint sqlx-prepare sqlx-check

## Start the whole system (api, outbox-relay, saga-worker) against the local services.
run: services migrate
	scripts/run.sh

## The same, with the customer simulator answering every saga (CREDIT_LIMIT, default 1000).
run-demo: services migrate
	scripts/run.sh --demo

## With Docker: build the image and start everything (see README, "With Docker").
up:
	docker compose up -d --build

## With Docker, plus the customer simulator (profile demo).
demo:
	docker compose --profile demo up -d --build

## With Docker: stop everything.
down:
	docker compose --profile demo down

## Down, and delete the volumes (data, queues); needed after changing credentials in .env,
## which the containers read only when their volume is first created.
clean:
	docker compose --profile demo down -v

## With Docker: follow the logs.
logs:
	docker compose logs -f --tail=100

## With Docker: the containers and their health.
ps:
	docker compose ps

## Run every test (unit and integration, against the real servers).
test: services
	# The deployment files, with real tools (compose schema, promtool, cross-checks).
	scripts/check-deploy.sh
	# The migrations, linted for changes that lock or break a running release (.squawk.toml).
	target/tools/squawk/bin/squawk migrations/*.sql
	# The end-to-end test runs the real binaries: build them first.
	cargo build --workspace --bins --examples
	# The rolling-update test runs the previous release beside them: built once, cached.
	scripts/previous-release.sh
	# Every test, those needing more than the three services (the binaries, rabbitmqctl,
	# redis-server, the tools of scripts/tools.sh) included: a plain `cargo test` skips them.
	DATABASE_URL=$(TEST_DATABASE_URL) cargo test --workspace --all-targets -- --include-ignored --skip broker_wide --skip cluster_
	# Tests that raise an alarm on the whole broker, alone.
	DATABASE_URL=$(TEST_DATABASE_URL) cargo test --workspace --test integration -- broker_wide --ignored --test-threads=1
	# Nodes killed under load, one test at a time: a three-node RabbitMQ 4 cluster and
	# PostgreSQL primaries with two standbys, on this machine (scripts/cluster.sh).
	DATABASE_URL=$(TEST_DATABASE_URL) cargo test --workspace --test integration -- cluster_ --ignored --test-threads=1 --nocapture
	# The bench harness in a few seconds per scenario, on the debug build, asserting no
	# figure: a scenario that no longer runs breaks CI, not the next `make bench`.
	BENCH_SMOKE=1 python3 scripts/bench.py
	# The chaos suite's short variant: real processes, injected faults, a ledger.
	CHAOS_SHORT=1 target/tools/venv/bin/python scripts/chaos.py
	# The same on the three-node RabbitMQ 4 cluster, node kills among the faults.
	CHAOS_SHORT=1 CHAOS_CLUSTER=1 target/tools/venv/bin/python scripts/chaos.py
	# The broker tests and the short chaos run again, on RabbitMQ 4 (scripts/rabbitmq4.sh).
	TEST_DATABASE_URL=$(TEST_DATABASE_URL) scripts/test-rabbitmq4.sh

## Start PostgreSQL, Redis and RabbitMQ on this machine if they are not up.
services:
	@scripts/services.sh

## Create the database if missing and apply the migrations.
migrate: services
	cargo run -q -p api -- migrate

## Faults injected into the running system (api, 2 relays, 2 workers, simulator), then a
## ledger: nothing lost, nothing duplicated, nothing stuck (scripts/chaos.py). Stops and
## starts the local RabbitMQ application: run it alone.
chaos: services
	scripts/tools.sh
	cargo build --workspace --bins --examples
	target/tools/venv/bin/python scripts/chaos.py

## Every hot path next to a baseline measured in the same run (bench/RESULTS.md).
bench: services
	python3 scripts/bench.py

## Print the targets and what each does.
help:
	@awk '/^## /{doc = doc substr($$0, 4) " "; next} /^[a-z][a-z-]*:/{split($$1, t, ":"); if (doc) printf "  %-13s %s\n", t[1], doc; doc = ""; next} {doc = ""}' $(MAKEFILE_LIST)

## The inner loop: formatting, clippy, and the tests that need only the three services
## (a plain `cargo test`; `make test` runs the rest).
check: services
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	DATABASE_URL=$(TEST_DATABASE_URL) cargo test --workspace --all-targets

## Format the Rust code.
fmt:
	cargo fmt --all

## What CI checks besides the tests: formatting, clippy, the docs' links (private items
## included: the docs are for the people working here), unused dependencies, and the
## Python and shell scripts (ruff, shellcheck).
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings -A rustdoc::private_intra_doc_links" cargo doc --no-deps --workspace --document-private-items
	scripts/tools.sh
	cargo machete
	scripts/lint.sh

## Regenerate .sqlx/ (the offline query data) after a query or a migration changed.
sqlx-prepare: services
	scripts/sqlx-prepare.sh

## Fail if .sqlx/ does not match the queries and migrations.
sqlx-check: services
	scripts/sqlx-prepare.sh --check
