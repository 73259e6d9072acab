#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis and RabbitMQ answer on their usual local ports.
# Used by `make run`, `make test` and `.ci/run` alike. In order, it:
#   1. uses the servers that already answer;
#   2. starts the servers installed on this machine;
#   3. with a Docker engine, starts them from compose.yaml;
#   4. as root on Debian, installs them from Debian's packages, then starts them.
set -euo pipefail
cd "$(dirname "$0")/.."

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# pg_isready also waits out a server that listens but is still recovering.
postgres_up() { if command -v pg_isready >/dev/null; then pg_isready -q -h 127.0.0.1 -p 5432; else port_open 5432; fi; }
redis_up() { port_open 6379; }
rabbitmq_up() { port_open 5672; }

all_up() { postgres_up && redis_up && rabbitmq_up; }

wait_for() { # name check seconds
    local name=$1 check=$2 seconds=$3
    for _ in $(seq "$seconds"); do
        if $check; then return 0; fi
        sleep 1
    done
    echo "services.sh: $name did not come up within ${seconds}s" >&2
    return 1
}

# The newest PostgreSQL cluster version installed (/etc/postgresql/<version>/main).
cluster_version() { find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -1; }

start_installed() {
    if ! postgres_up && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        echo "services.sh: starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(cluster_version)" main start || true
    fi
    if ! redis_up && command -v redis-server >/dev/null; then
        echo "services.sh: starting Redis"
        mkdir -p /var/lib/redis /var/log/redis
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
            --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    fi
    if ! rabbitmq_up && command -v rabbitmq-server >/dev/null; then
        echo "services.sh: starting RabbitMQ"
        rabbitmq-server -detached || true
    fi
}

installed() { command -v pg_ctlcluster >/dev/null && command -v redis-server >/dev/null && command -v rabbitmq-server >/dev/null; }

# The README answers sagas from RabbitMQ's admin panel, and a test drives it: the
# management plugin (Debian's rabbitmq-server ships it) on the local node, port 15672.
management() {
    if command -v rabbitmq-plugins >/dev/null && rabbitmq_up && ! port_open 15672; then
        echo "services.sh: enabling the RabbitMQ management plugin (http://127.0.0.1:15672/)"
        rabbitmq-plugins enable -q rabbitmq_management >/dev/null
        wait_for "RabbitMQ management" "port_open 15672" 60
    fi
}

if all_up; then
    management
    exit 0
fi

if installed; then
    start_installed
elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    # Only those that are down: a local server already on its port would block the container's.
    down=()
    postgres_up || down+=(postgres)
    redis_up || down+=(redis)
    rabbitmq_up || down+=(rabbitmq)
    echo "services.sh: starting ${down[*]} from compose.yaml"
    docker compose up -d "${down[@]}"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "services.sh: installing PostgreSQL, Redis and RabbitMQ from Debian's packages"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql redis-server rabbitmq-server
    # A fresh Debian cluster asks for a password over TCP; a local development server
    # trusts loopback, as the default DATABASE_URL (user postgres, no password) expects.
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
        grep -q '^host all all 127.0.0.1/32 trust' "$hba" ||
            sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    done
    start_installed
    # The package may have started the cluster before pg_hba.conf changed.
    pg_ctlcluster --skip-systemctl-redirect "$(cluster_version)" main reload || true
else
    echo "services.sh: PostgreSQL, Redis or RabbitMQ is down, and there is no way here to start them." >&2
    echo "Start them yourself (see README.md), or install Docker." >&2
    exit 1
fi

wait_for PostgreSQL postgres_up 60
wait_for Redis redis_up 60
wait_for RabbitMQ rabbitmq_up 120
management
