#!/usr/bin/env bash
# Clusters on this machine, for the node-kill tests and the chaos run's cluster mode:
#
#   scripts/cluster.sh rabbitmq
#       Three RabbitMQ 4.0.5 nodes joined in one cluster, from the root that
#       scripts/rabbitmq4.sh builds (beside its own node, which stays alone):
#         rabbitc1@localhost  AMQP 127.0.0.1:5674  distribution 25674  management 15674
#         rabbitc2@localhost  AMQP 127.0.0.1:5675  distribution 25675  management 15675
#         rabbitc3@localhost  AMQP 127.0.0.1:5676  distribution 25676  management 15676
#       Idempotent: a node that is down (killed by a test, say) is started again and
#       rejoins; a second call with all three up returns in milliseconds. Prints the one
#       AMQP_URL naming the three nodes as its only stdout line.
#   scripts/cluster.sh rabbitmq-ctl N ARGS    rabbitmqctl ARGS against node N (1, 2 or 3)
#   scripts/cluster.sh rabbitmq-pid N         the pid of node N's Erlang VM (for kill -9)
#   scripts/cluster.sh rabbitmq-stop          stops the three nodes
#
#   scripts/cluster.sh postgres DIR PORT [sync|async]
#       A PostgreSQL primary on PORT and two streaming standbys on PORT+1 and PORT+2
#       (standby1, standby2), in DIR (created; owned by the postgres user), with
#       `synchronous_commit = on` and `synchronous_standby_names = 'ANY 1 (standby1,
#       standby2)'` (CloudNativePG's quorum-based synchronous replication), or no
#       synchronous standby with `async`. Each test makes its own (a failover changes who
#       is primary). Prints the primary's URL.
#   scripts/cluster.sh postgres-kill DIR NAME  kill -9 every process of server NAME
#                                              (primary, standby1 or standby2)
#   scripts/cluster.sh postgres-promote DIR N  promotes standbyN, and points the other
#                                              standby at it (as CloudNativePG does)
#   scripts/cluster.sh postgres-stop DIR      stops every server of DIR
#
# Exit code 3, with one line on stderr starting "cluster: unavailable:", where a cluster
# cannot be had here (not root, no RabbitMQ 4 root, no PostgreSQL binaries): callers
# skip with that line. Other failures exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "cluster: $*" >&2; }
unavailable() {
    echo "cluster: unavailable: $*" >&2
    exit 3
}
die() {
    echo "cluster: error: $*" >&2
    exit 1
}

# --- RabbitMQ --------------------------------------------------------------------------

STATE=${RABBITMQ4_STATE:-/var/lib/order-service}
ROOT=${RABBITMQ4_ROOT:-$STATE/rabbitmq4-root}
NODES=(rabbitc1@localhost rabbitc2@localhost rabbitc3@localhost)
BOOT_SECONDS=${RABBITMQ4_BOOT_SECONDS:-180}

amqp_port() { echo $((5673 + $1)); }
node_name() { echo "${NODES[$(($1 - 1))]}"; }
# Where node N keeps its data, logs, config and pid file, inside the root.
node_home() { echo "/var/lib/rabbitmq/cluster/c$1"; }

# RabbitMQ's version as the broker on PORT announces it in connection.start, or nothing:
# a few milliseconds, no Erlang VM.
amqp_version() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'AMQP\\x00\\x00\\x09\\x01' >&3 && dd bs=4096 count=1 <&3 2>/dev/null" 2>/dev/null |
        tr -c '[:print:]' '\n' | awk 'f && NF {print; exit} /versionS$/ {f=1}' || true
}
answers() { [[ $(amqp_version "$(amqp_port "$1")") == 4.* ]]; }

# Node N's environment: its own name, ports, data and config (the root's rabbitmq-env.conf
# and rabbitmq.conf are its single node's; these settings win over them).
node_env() {
    local n=$1 home
    home=$(node_home "$n")
    echo HOME=/var/lib/rabbitmq LANG=C.UTF-8 LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        RABBITMQ_NODENAME="$(node_name "$n")" RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
        RABBITMQ_DIST_PORT=$((25673 + n)) RABBITMQ_MNESIA_BASE="$home/mnesia" RABBITMQ_LOG_BASE="$home/log" \
        RABBITMQ_CONFIG_FILE="$home/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$home/enabled_plugins" \
        RABBITMQ_CONF_ENV_FILE="$home/rabbitmq-env.conf"
}

# Runs a command inside the root as node N sees it, without fd 9 (the lock: a detached
# node that inherited it would hold it for as long as it runs).
as_node() {
    local n=$1
    shift
    # shellcheck disable=SC2046 # node_env is a list of NAME=value words without spaces
    chroot --userspec=rabbitmq:rabbitmq "$ROOT" /usr/bin/env -i $(node_env "$n") "$@" 9>&-
}
node_ctl() {
    local n=$1
    shift
    as_node "$n" /usr/lib/rabbitmq/bin/rabbitmqctl -n "$(node_name "$n")" "$@"
}

# The pid of node N's VM: beam.smp in the root, booting rabbit, named N in its environment.
node_pid() {
    local d name
    name=$(node_name "$1")
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = beam.smp ] || continue
        [ "$(readlink "$d/root" 2>/dev/null)" = "$ROOT" ] || continue
        tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q 'rabbit boot' || continue
        # The node's name is in its environment (node_env), not on its command line.
        tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -qx "RABBITMQ_NODENAME=$name" && echo "${d#/proc/}" && return 0
    done
    return 0
}

write_node_config() {
    local n=$1 home
    home=$ROOT$(node_home "$n")
    mkdir -p "$home/mnesia" "$home/log"
    cat >"$home/rabbitmq.conf" <<EOF
# Written by order-service scripts/cluster.sh: node $n of the local three-node cluster.
listeners.tcp.local = 127.0.0.1:$(amqp_port "$n")
management.tcp.ip = 127.0.0.1
management.tcp.port = $((15673 + n))
EOF
    echo '[rabbitmq_management].' >"$home/enabled_plugins"
    # Mnesia's directory from the VM's first moment: a node launched while its peers wait
    # for it has them start its Mnesia before RabbitMQ's prelaunch names the directory,
    # and Mnesia then stops on "Cannot create Mnesia dir /Mnesia.rabbitc3@localhost"
    # (3 times in a dozen whole-cluster restarts here, always the node launched last).
    cat >"$home/rabbitmq-env.conf" <<EOF
# Written by order-service scripts/cluster.sh.
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -mnesia dir \\"$(node_home "$n")/mnesia/$(node_name "$n")\\""
EOF
    chown -R rabbitmq:rabbitmq "$ROOT/var/lib/rabbitmq/cluster" 2>/dev/null ||
        chroot "$ROOT" chown -R rabbitmq:rabbitmq /var/lib/rabbitmq/cluster
}

# Starts node N's VM, detached, unless it runs; await_nodes then waits for it to boot.
launch_node() {
    local n=$1
    [ -z "$(node_pid "$n")" ] || return 0
    write_node_config "$n"
    log "starting $(node_name "$n") (AMQP $(amqp_port "$n"))"
    as_node "$n" /usr/lib/rabbitmq/bin/rabbitmq-server -detached >/dev/null 2>&1 </dev/null || true
}

# Waits until every node of NODE... has booted. A node that exits while booting is
# launched again, twice at most: when a whole cluster restarts together, one node's Mnesia
# may stop on a schema update it cannot write (seen once in six whole-cluster restarts
# here, after an {inconsistent_database, starting_partitioned_network} event), and its
# peers then wait for it.
await_nodes() {
    local deadline=$((SECONDS + BOOT_SECONDS)) n pending=("$@") waiting relaunched=(0 0 0 0)
    while ((${#pending[@]})); do
        waiting=()
        for n in "${pending[@]}"; do
            node_ctl "$n" -q await_startup --timeout 2 >/dev/null 2>&1 && continue
            waiting+=("$n")
            [ -z "$(node_pid "$n")" ] || continue
            sleep 2
            [ -z "$(node_pid "$n")" ] || continue
            # Twice gone: a node that failed in its prelaunch (a bad setting) prints why
            # to a stdout that -detached threw away; say how to see it.
            ((relaunched[n] < 2)) ||
                die "$(node_name "$n") exited while booting; run it in the foreground to see why: chroot --userspec=rabbitmq:rabbitmq $ROOT env -i $(node_env "$n") /usr/lib/rabbitmq/bin/rabbitmq-server"
            relaunched[n]=$((relaunched[n] + 1))
            log "$(node_name "$n") exited while booting; starting it again"
            launch_node "$n"
        done
        pending=("${waiting[@]}")
        ((${#pending[@]} == 0 || SECONDS < deadline)) ||
            die "$(node_name "${pending[0]}") did not boot within ${BOOT_SECONDS}s (logs: $ROOT$(node_home "${pending[0]}")/log)"
    done
}

# Node N is in node 1's cluster: joined once (stop_app, join_cluster, start_app); a node
# that comes back after a kill rejoins by itself.
join() {
    local n=$1 first
    first=$(node_name 1)
    if node_ctl "$n" -q cluster_status --formatter json 2>/dev/null | grep -q "\"$first\""; then
        return 0
    fi
    log "joining $(node_name "$n") to $first"
    node_ctl "$n" -q stop_app
    node_ctl "$n" -q join_cluster "$first"
    node_ctl "$n" -q start_app
}

cmd_rabbitmq() {
    if answers 1 && answers 2 && answers 3; then
        rabbitmq_url
        return 0
    fi
    [ "$(id -u)" = 0 ] || unavailable "starting cluster nodes needs root (chroot)"
    # The root, its mounts and its Erlang cookie come from rabbitmq4.sh (which also runs
    # its own single node, left alone here).
    local code=0
    scripts/rabbitmq4.sh >/dev/null || code=$?
    [ "$code" = 3 ] && unavailable "no RabbitMQ 4 root (scripts/rabbitmq4.sh)"
    [ "$code" = 0 ] || die "scripts/rabbitmq4.sh failed"
    mkdir -p "$STATE"
    exec 9>"$STATE/cluster.lock"
    flock 9
    # Every node that is down is launched before any is awaited: a node of a cluster
    # whose peers all stopped (a machine restarted, every node killed) waits for them
    # before it boots (5 min: "Waiting for Mnesia tables", 10 retries of 30 s), so
    # awaiting one before launching the next never ends; a whole cluster restarts in
    # parallel (the RabbitMQ cluster operator's own fix, rabbitmq/cluster-operator#609).
    local down=()
    for n in 1 2 3; do answers "$n" || down+=("$n"); done
    for n in "${down[@]}"; do launch_node "$n"; done
    await_nodes "${down[@]}"
    for n in 2 3; do join "$n"; done
    log "cluster up: $(node_ctl 1 -q cluster_status --formatter json | grep -o 'rabbitc[0-9]@localhost' | sort -u | tr '\n' ' ')"
    rabbitmq_url
}

rabbitmq_url() {
    echo "amqp://guest:guest@127.0.0.1:$(amqp_port 1),127.0.0.1:$(amqp_port 2),127.0.0.1:$(amqp_port 3)/%2f"
}

cmd_rabbitmq_stop() {
    [ "$(id -u)" = 0 ] || die "stopping cluster nodes needs root (chroot)"
    local n pid
    for n in 3 2 1; do
        pid=$(node_pid "$n")
        [ -n "$pid" ] || continue
        log "stopping $(node_name "$n")"
        node_ctl "$n" -q stop >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
    done
}

# --- PostgreSQL --------------------------------------------------------------------------

pg_bin() {
    local bin
    bin=$(find /usr/lib/postgresql -maxdepth 3 -name pg_ctl -path '*/bin/*' 2>/dev/null | sort -V | tail -n 1)
    [ -n "$bin" ] || unavailable "no PostgreSQL server binaries under /usr/lib/postgresql"
    dirname "$bin"
}
as_postgres() { runuser -u postgres -- "$@"; }
pg_answers() { pg_isready -q -h 127.0.0.1 -p "$1" 2>/dev/null; }

cmd_postgres() {
    local dir=${1:?usage: cluster.sh postgres DIR PORT [sync|async]} port=${2:?PORT} mode=${3:-sync} bin
    [ "$(id -u)" = 0 ] || unavailable "a PostgreSQL cluster of its own needs root (runuser -u postgres)"
    bin=$(pg_bin)
    if pg_answers "$port" && pg_answers $((port + 1)) && pg_answers $((port + 2)); then
        echo "postgres://postgres@127.0.0.1:$port/postgres"
        return 0
    fi
    cmd_postgres_stop "$dir" 2>/dev/null || true
    rm -rf "$dir"
    mkdir -p "$dir"
    chown postgres: "$dir"
    as_postgres "$bin/initdb" -A trust -U postgres -D "$dir/primary" >"$dir/initdb.log" 2>&1 ||
        die "initdb failed (see $dir/initdb.log)"
    local sync_names="'ANY 1 (standby1, standby2)'"
    [ "$mode" = async ] && sync_names="''"
    cat >>"$dir/primary/postgresql.conf" <<EOF
# Written by order-service scripts/cluster.sh ($mode replication).
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
wal_level = replica
max_wal_senders = 10
hot_standby = on
wal_keep_size = '256MB'
synchronous_commit = on
synchronous_standby_names = $sync_names
EOF
    echo "host replication all 127.0.0.1/32 trust" >>"$dir/primary/pg_hba.conf"
    as_postgres "$bin/pg_ctl" -D "$dir/primary" -l "$dir/primary.log" -w -t 60 start >/dev/null
    local i standby_port
    for i in 1 2; do
        standby_port=$((port + i))
        as_postgres "$bin/pg_basebackup" -h 127.0.0.1 -p "$port" -U postgres -D "$dir/standby$i" -R -X stream \
            >"$dir/basebackup$i.log" 2>&1 || die "pg_basebackup failed (see $dir/basebackup$i.log)"
        echo "port = $standby_port" >>"$dir/standby$i/postgresql.conf"
        # After pg_basebackup -R's own line, which names no application (and would win
        # from postgresql.conf): the primary knows each standby by its name.
        echo "primary_conninfo = 'host=127.0.0.1 port=$port user=postgres application_name=standby$i'" \
            >>"$dir/standby$i/postgresql.auto.conf"
        as_postgres "$bin/pg_ctl" -D "$dir/standby$i" -l "$dir/standby$i.log" -w -t 60 start >/dev/null
    done
    # Both standbys stream before the cluster is said to be up.
    local streaming=0
    for _ in $(seq 100); do
        streaming=$(psql -qtA -h 127.0.0.1 -p "$port" -U postgres -d postgres \
            -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" 2>/dev/null || echo 0)
        [ "$streaming" = 2 ] && break
        sleep 0.1
    done
    [ "$streaming" = 2 ] || die "the standbys of $dir are not streaming (logs in $dir)"
    log "postgres $mode cluster in $dir: primary $port, standbys $((port + 1)) and $((port + 2))"
    echo "postgres://postgres@127.0.0.1:$port/postgres"
}

# The port server NAME of DIR listens on.
server_port() { awk -F'= ' '$1 == "port " {p = $2} END {print p}' "$1/$2/postgresql.conf"; }

cmd_postgres_kill() {
    local dir=${1:?usage: cluster.sh postgres-kill DIR NAME} name=${2:?NAME} pid children
    pid=$(head -n 1 "$dir/$name/postmaster.pid" 2>/dev/null) || die "$name of $dir is not running"
    # The postmaster and every backend, walsender and worker it forked, at once.
    children=$(pgrep -P "$pid" || true)
    # shellcheck disable=SC2086 # a list of pids
    kill -9 "$pid" $children 2>/dev/null || true
    log "killed $name of $dir (postmaster $pid and $(echo "$children" | wc -w) children)"
}

cmd_postgres_promote() {
    local dir=${1:?usage: cluster.sh postgres-promote DIR N} n=${2:?N} bin other port
    bin=$(pg_bin)
    other=$((3 - n))
    as_postgres "$bin/pg_ctl" -D "$dir/standby$n" -w -t 60 promote >/dev/null
    port=$(server_port "$dir" "standby$n")
    if [ -f "$dir/standby$other/postmaster.pid" ]; then
        # The other standby follows the new primary's timeline (recovery_target_timeline
        # is 'latest' by default); primary_conninfo takes effect on a reload.
        echo "primary_conninfo = 'host=127.0.0.1 port=$port user=postgres application_name=standby$other'" \
            >>"$dir/standby$other/postgresql.auto.conf"
        as_postgres "$bin/pg_ctl" -D "$dir/standby$other" reload >/dev/null
    fi
    log "standby$n of $dir promoted (port $port)"
    echo "postgres://postgres@127.0.0.1:$port/postgres"
}

cmd_postgres_stop() {
    local dir=${1:?usage: cluster.sh postgres-stop DIR} bin server
    bin=$(pg_bin)
    for server in "$dir"/primary "$dir"/standby1 "$dir"/standby2; do
        [ -f "$server/postmaster.pid" ] || continue
        as_postgres "$bin/pg_ctl" -D "$server" -m immediate -w stop >/dev/null 2>&1 || true
    done
}

case "${1:-}" in
rabbitmq) cmd_rabbitmq ;;
rabbitmq-ctl)
    n=${2:?usage: cluster.sh rabbitmq-ctl N ARGS}
    shift 2
    node_ctl "$n" "$@"
    ;;
rabbitmq-pid) node_pid "${2:?usage: cluster.sh rabbitmq-pid N}" ;;
rabbitmq-stop) cmd_rabbitmq_stop ;;
postgres)
    shift
    cmd_postgres "$@"
    ;;
postgres-kill) cmd_postgres_kill "${2:-}" "${3:-}" ;;
postgres-promote) cmd_postgres_promote "${2:-}" "${3:-}" ;;
postgres-stop) cmd_postgres_stop "${2:-}" ;;
*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
esac
