#!/usr/bin/env bash
# A RabbitMQ 4.x node beside the machine's own RabbitMQ (3.10 on Debian 12, node
# rabbit@localhost, AMQP 5672), which it leaves alone. The 4.x broker comes from
# Debian 13 (trixie) in a chroot built with debootstrap, and runs as its own node:
#
#   node rabbit4@localhost   AMQP 127.0.0.1:5673   management http://127.0.0.1:15673/
#   distribution port 25673  its own Erlang cookie (ROOT/var/lib/rabbitmq/.erlang.cookie)
#
# Usage (as root):
#   scripts/rabbitmq4.sh            builds the root if need be, starts the node if it is
#                                   not running (or died), waits for it to boot, and prints
#                                   amqp://guest:guest@127.0.0.1:5673/%2f as its only stdout line
#   scripts/rabbitmq4.sh ctl ARGS   rabbitmqctl ARGS against the 4.x node, run inside the root
#   scripts/rabbitmq4.sh stop       stops the 4.x node (and unmounts ROOT/proc)
#
# RABBITMQ4_ROOT, RABBITMQ4_STATE and RABBITMQ4_MIRROR override the root, the directory of
# its lock and build log, and the Debian mirror (by default the one apt uses here).
#
# Exit code 3, with one line on stderr starting "rabbitmq4: unavailable:", when the
# 4.x node cannot be had here at all (not root, no debootstrap, mirror unreachable,
# build failed): callers skip their 4.x run with that line. Other failures exit 1.
#
# Where the root lives: /var/lib/order-service/rabbitmq4-root (RABBITMQ4_ROOT overrides),
# not target/, because
#   - it is a ~400 MB machine-wide thing: every clone or worktree of the repository
#     reuses it, and `cargo clean` does not throw away a build of a few minutes;
#   - while the node runs, ROOT/proc is a mount and ROOT/dev holds device nodes, which
#     `cargo clean` or `rm -rf target` must not walk into.
# To remove it: scripts/rabbitmq4.sh stop && rm -rf --one-file-system /var/lib/order-service/rabbitmq4-root
#
# Traps met on the way, handled below:
#   - epmd: the host's epmd (OTP 25, from the 3.10 node) already owns 127.0.0.1:4369, and the
#     chroot shares the network namespace; the 4.x node (OTP 27) just registers with it (the
#     epmd protocol is stable). If no epmd runs, the node starts the chroot's one, which the
#     3.10 node then uses in turn: so `stop` never kills an epmd.
#   - cookies: the CLI must run inside the root, with HOME=/var/lib/rabbitmq, to read that
#     root's cookie; the host's rabbitmqctl cannot talk to rabbit4@localhost and the root's
#     cannot talk to rabbit@localhost, which keeps the two apart.
#   - hostnames: the node name is rabbit4@localhost, which needs "localhost" in ROOT/etc/hosts.
#   - settings live in ROOT/etc/rabbitmq/rabbitmq-env.conf rather than the environment: the
#     Debian wrapper re-runs every command through `su rabbitmq`, and so does the CLI, which
#     then finds the node name there too.
#   - mounts: only ROOT/proc is mounted, once (checked in /proc/mounts); /dev is not bound,
#     the few device nodes the broker needs are created in ROOT/dev instead.
#   - user ids: a fresh trixie root would give its rabbitmq user 101:102, postgres:messagebus
#     on the host (see ensure_rabbitmq_ids).
#   - the lock: `rabbitmq-server -detached` keeps every open fd, so the flock fd is closed
#     for whatever runs in the root, or the node would hold the lock until it stops.
#   - the fast path opens an AMQP connection and drops it after connection.start, which the
#     node logs as a warning ("client unexpectedly closed TCP connection"): harmless.
set -euo pipefail

STATE=${RABBITMQ4_STATE:-/var/lib/order-service}
ROOT=${RABBITMQ4_ROOT:-$STATE/rabbitmq4-root}
SUITE=trixie
NODE=rabbit4@localhost
PORT=5673
DIST_PORT=25673
MGMT_PORT=15673
URL="amqp://guest:guest@127.0.0.1:$PORT/%2f"
MARKER=$ROOT/.order-service-rabbitmq4-installed
BUILD_LOG=$STATE/rabbitmq4-build.log
LOCK=$STATE/rabbitmq4.lock
BOOT_SECONDS=${RABBITMQ4_BOOT_SECONDS:-180}

log() { echo "rabbitmq4: $*" >&2; }
unavailable() { echo "rabbitmq4: unavailable: $*" >&2; exit 3; }
die() { echo "rabbitmq4: error: $*" >&2; exit 1; }

# The RabbitMQ version the broker on $PORT announces in its AMQP connection.start, or
# nothing. No CLI, no Erlang VM: a few milliseconds, which is the fast path of a re-run.
amqp_version() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT && printf 'AMQP\\x00\\x00\\x09\\x01' >&3 && dd bs=4096 count=1 <&3 2>/dev/null" 2>/dev/null |
        tr -c '[:print:]' '\n' | awk 'f && NF {print; exit} /versionS$/ {f=1}' || true
}
node_answers() { [[ $(amqp_version) == 4.* ]]; }

# Runs COMMAND inside the root with a clean environment, and without fd 9, the lock: a
# detached node that inherited it would hold the lock for as long as it runs.
in_root() {
    chroot "$ROOT" /usr/bin/env -i HOME=/var/lib/rabbitmq LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        PATH=/usr/sbin:/usr/bin:/sbin:/bin TERM="${TERM:-dumb}" "$@" 9>&-
}
ctl() { in_root rabbitmqctl -n "$NODE" "$@"; }

mounted() { awk -v m="$1" '$2 == m {found = 1} END {exit !found}' /proc/mounts; }

# Everything mounted under the root, deepest first (left over by a failed debootstrap, say).
unmount_all() {
    local m
    awk -v r="$ROOT" 'index($2, r "/") == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
}

ensure_dev() {
    local spec name type major minor
    mkdir -p "$ROOT/dev/pts" "$ROOT/dev/shm"
    for spec in null:c:1:3 zero:c:1:5 full:c:1:7 random:c:1:8 urandom:c:1:9 tty:c:5:0; do
        IFS=: read -r name type major minor <<<"$spec"
        [ -c "$ROOT/dev/$name" ] && continue
        rm -f "$ROOT/dev/$name"
        if ! mknod -m 666 "$ROOT/dev/$name" "$type" "$major" "$minor" 2>/dev/null; then
            # No CAP_MKNOD (a container): bind the host's node onto an empty file instead.
            touch "$ROOT/dev/$name"
            mounted "$ROOT/dev/$name" || mount --bind "/dev/$name" "$ROOT/dev/$name"
        fi
    done
    [ -e "$ROOT/dev/fd" ] || ln -s /proc/self/fd "$ROOT/dev/fd"
    [ -e "$ROOT/dev/stdin" ] || ln -s /proc/self/fd/0 "$ROOT/dev/stdin"
    [ -e "$ROOT/dev/stdout" ] || ln -s /proc/self/fd/1 "$ROOT/dev/stdout"
    [ -e "$ROOT/dev/stderr" ] || ln -s /proc/self/fd/2 "$ROOT/dev/stderr"
}

ensure_mounts() {
    ensure_dev
    mkdir -p "$ROOT/proc"
    mounted "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
}

# The first Debian archive mirror apt is configured with (deb822 .sources or one-line .list),
# security and other archives left out.
apt_mirror() {
    local f uri=${RABBITMQ4_MIRROR:-}
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -z "$uri" ] && [ -f "$f" ] || continue
        uri=$(awk '
            function flush() { if (!done && deb && on && uri != "" && suites !~ /-security/ && uri ~ /\/debian\/?$/) { print uri; done = 1; exit } }
            /^[ \t]*$/ { flush(); deb = 0; on = 1; uri = ""; suites = ""; next }
            /^#/ { next }
            tolower($1) == "types:" { deb = / deb( |$)/ }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { suites = $0 }
            tolower($1) == "enabled:" { on = tolower($2) != "no" }
            BEGIN { on = 1 }
            END { flush() }' "$f")
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$f" ] || continue
            uri=$(sed -E 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $3 !~ /-security/ && $2 ~ /\/debian\/?$/ {print $2; exit}')
            [ -n "$uri" ] && break
        done
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# The root's own /etc/passwd would give its rabbitmq user the first free system ids of a
# fresh trixie (101:102 here), which on the host are other accounts' (postgres, messagebus):
# `ps -u postgres` would list the 4.x broker, and the host's postgres user would own its files
# and cookie. So the root's rabbitmq user takes the host's rabbitmq ids (both brokers then show
# as rabbitmq), or ids that no account uses on the host or in the root. An existing root with
# other ids is moved over (files re-owned); that needs the node stopped.
field3() { awk -F: -v n="$2" '$1 == n {print $3; exit}' "$1"; }
id_taken() { # file id name: some account other than name has id in file
    awk -F: -v id="$2" -v n="$3" '$3 == id && $1 != n {f = 1} END {exit !f}' "$1"
}
free_id() { # kind (passwd|group): a system id free on the host and in the root
    local i
    for i in $(seq 999 -1 100); do
        getent "$1" "$i" >/dev/null || id_taken "$ROOT/etc/$1" "$i" "" || { echo "$i"; return; }
    done
    die "no free system $1 id"
}
ensure_rabbitmq_ids() {
    local want_gid want_uid cur_gid cur_uid
    want_gid=$(getent group rabbitmq | cut -d: -f3) || true
    if [ -z "$want_gid" ] || id_taken "$ROOT/etc/group" "$want_gid" rabbitmq; then want_gid=$(free_id group); fi
    want_uid=$(getent passwd rabbitmq | cut -d: -f3) || true
    if [ -z "$want_uid" ] || id_taken "$ROOT/etc/passwd" "$want_uid" rabbitmq; then want_uid=$(free_id passwd); fi
    cur_gid=$(field3 "$ROOT/etc/group" rabbitmq)
    cur_uid=$(field3 "$ROOT/etc/passwd" rabbitmq)
    [ "$cur_gid" = "$want_gid" ] && [ "$cur_uid" = "$want_uid" ] && return 0
    if [ -z "$cur_gid" ]; then
        in_root groupadd --system --gid "$want_gid" rabbitmq
    elif [ "$cur_gid" != "$want_gid" ]; then
        log "moving the root's rabbitmq group from gid $cur_gid to $want_gid"
        in_root groupmod --gid "$want_gid" rabbitmq
        find "$ROOT" -xdev -gid "$cur_gid" -exec chown -h ":$want_gid" {} +
    fi
    if [ -z "$cur_uid" ]; then
        in_root useradd --system --uid "$want_uid" --gid rabbitmq --home-dir /var/lib/rabbitmq \
            --no-create-home --shell /usr/sbin/nologin --comment "RabbitMQ messaging server" rabbitmq
    elif [ "$cur_uid" != "$want_uid" ]; then
        log "moving the root's rabbitmq user from uid $cur_uid to $want_uid"
        in_root usermod --uid "$want_uid" --gid rabbitmq rabbitmq
        find "$ROOT" -xdev -uid "$cur_uid" -exec chown -h "$want_uid" {} +
    fi
}

write_config() {
    mkdir -p "$ROOT/etc/rabbitmq"
    cat >"$ROOT/etc/rabbitmq/rabbitmq-env.conf" <<EOF
# Written by order-service scripts/rabbitmq4.sh: the 4.x node beside the host's 3.10 one.
NODENAME=$NODE
NODE_PORT=$PORT
DIST_PORT=$DIST_PORT
ERL_EPMD_ADDRESS=127.0.0.1
SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
    cat >"$ROOT/etc/rabbitmq/rabbitmq.conf" <<EOF
# Written by order-service scripts/rabbitmq4.sh. Loopback only, like the host's 3.10 node;
# guest may log in from there (loopback_users default).
listeners.tcp.local = 127.0.0.1:$PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $MGMT_PORT
EOF
    # Plugins enabled later (rabbitmq-plugins inside the root) stay enabled.
    grep -qs rabbitmq_management "$ROOT/etc/rabbitmq/enabled_plugins" ||
        echo '[rabbitmq_management].' >"$ROOT/etc/rabbitmq/enabled_plugins"
}

build_root() {
    [ "$(id -u)" = 0 ] || unavailable "building the trixie root needs root (debootstrap, chroot, mount)"
    command -v apt-get >/dev/null || unavailable "no apt-get here: not a Debian machine, cannot debootstrap"
    mkdir -p "$STATE"
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >>"$BUILD_LOG" 2>&1 ||
            { apt-get update -q >>"$BUILD_LOG" 2>&1 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >>"$BUILD_LOG" 2>&1; } ||
            unavailable "cannot install debootstrap with apt-get (see $BUILD_LOG)"
    fi
    [ -e "/usr/share/debootstrap/scripts/$SUITE" ] ||
        unavailable "this debootstrap does not know $SUITE; upgrade debootstrap"
    local mirror
    mirror=$(apt_mirror)
    if command -v curl >/dev/null; then
        curl -fsS -m 30 -o /dev/null "$mirror/dists/$SUITE/Release" 2>>"$BUILD_LOG" ||
            unavailable "Debian mirror $mirror/dists/$SUITE/Release unreachable"
    elif command -v wget >/dev/null; then
        wget -q -T 30 -O /dev/null "$mirror/dists/$SUITE/Release" 2>>"$BUILD_LOG" ||
            unavailable "Debian mirror $mirror/dists/$SUITE/Release unreachable"
    fi

    if [ ! -e "$ROOT/.debootstrap-done" ]; then
        if [ -e "$ROOT" ]; then
            log "removing the unfinished root $ROOT"
            unmount_all
            rm -rf --one-file-system "$ROOT"
        fi
        log "debootstrap --variant=minbase $SUITE $ROOT $mirror (a few minutes; log: $BUILD_LOG)"
        if ! debootstrap --variant=minbase "$SUITE" "$ROOT" "$mirror" >>"$BUILD_LOG" 2>&1; then
            unmount_all
            tail -n 5 "$BUILD_LOG" >&2
            unavailable "debootstrap of $SUITE from $mirror failed (see $BUILD_LOG)"
        fi
        touch "$ROOT/.debootstrap-done"
    fi

    # No service may start inside the root when packages are installed.
    printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
    chmod 755 "$ROOT/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    ensure_hosts
    ensure_mounts
    ensure_rabbitmq_ids # before the package creates the user with the root's next free ids
    log "installing rabbitmq-server in the root"
    if ! { in_root apt-get update -q && in_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends rabbitmq-server; } >>"$BUILD_LOG" 2>&1; then
        tail -n 5 "$BUILD_LOG" >&2
        unavailable "apt-get install rabbitmq-server failed in the $SUITE root (see $BUILD_LOG)"
    fi
    in_root apt-get clean >>"$BUILD_LOG" 2>&1 || true
    write_config
    # shellcheck disable=SC2016 # ${Version} is dpkg-query's field, not the shell's
    in_root dpkg-query -W -f '${Version}\n' rabbitmq-server >"$MARKER"
    log "installed rabbitmq-server $(cat "$MARKER") in $ROOT"
}

ensure_hosts() {
    grep -qsE '^127\.0\.0\.1[[:space:]]+(.*[[:space:]])?localhost([[:space:]]|$)' "$ROOT/etc/hosts" ||
        printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >>"$ROOT/etc/hosts"
}

# The pids of the 4.x broker's Erlang VM: beam.smp in the root, running "rabbit boot"
# (the CLI tools are beam.smp too, but run an escript).
node_pids() {
    local d
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = beam.smp ] || continue
        [ "$(readlink "$d/root" 2>/dev/null)" = "$ROOT" ] || continue
        tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q 'rabbit boot' || continue
        # Not one of scripts/cluster.sh's nodes in the same root, which are named in their
        # environment (this one's name is in its rabbitmq-env.conf).
        tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -q '^RABBITMQ_NODENAME=rabbitc' || echo "${d#/proc/}"
    done
    return 0
}

start_node() {
    local pidfile=$ROOT/var/lib/rabbitmq/mnesia/$NODE.pid
    if [ -n "$(node_pids)" ]; then
        log "node $NODE is running but not answering yet; waiting"
    else
        ensure_rabbitmq_ids
        # A node that died leaves its pid file behind; rabbitmq-server does not mind, but
        # `rabbitmqctl wait` would, so it goes.
        if [ -f "$pidfile" ]; then
            log "node $NODE died (stale pid $(cat "$pidfile" 2>/dev/null)); restarting it"
            rm -f "$pidfile"
        fi
        log "starting node $NODE (AMQP $PORT, management $MGMT_PORT, distribution $DIST_PORT)"
        in_root rabbitmq-server -detached >/dev/null 2>&1 </dev/null || true
    fi
    local deadline=$((SECONDS + BOOT_SECONDS)) last=
    while ((SECONDS < deadline)); do
        if last=$(ctl -q await_startup --timeout 30 2>&1); then
            return 0
        fi
        if [ -z "$(node_pids)" ]; then
            sleep 2 # the VM may still be execing (the su, the shell scripts before it)
            if [ -z "$(node_pids)" ]; then
                tail -n 20 "$ROOT/var/log/rabbitmq/$NODE.log" >&2 2>/dev/null || true
                tail -n 20 "$ROOT/var/log/rabbitmq/startup_err" >&2 2>/dev/null || true
                die "node $NODE exited while booting (logs in $ROOT/var/log/rabbitmq/)"
            fi
        fi
        sleep 1
    done
    echo "$last" >&2
    die "node $NODE did not finish booting within ${BOOT_SECONDS}s (logs in $ROOT/var/log/rabbitmq/)"
}

cmd_start() {
    # Fast path, no lock and no root needed: the node answers AMQP as a 4.x broker.
    if node_answers; then
        echo "$URL"
        return 0
    fi
    [ "$(id -u)" = 0 ] || unavailable "the node is not running and starting it needs root (chroot, mount)"
    mkdir -p "$STATE"
    exec 9>"$LOCK"
    flock 9 # one build or start at a time
    if node_answers; then
        echo "$URL"
        return 0
    fi
    [ -f "$MARKER" ] || build_root
    ensure_hosts
    ensure_mounts
    write_config
    start_node
    log "node $NODE is up: RabbitMQ $(amqp_version), management http://127.0.0.1:$MGMT_PORT/"
    echo "$URL"
}

cmd_ctl() {
    [ "$(id -u)" = 0 ] || unavailable "rabbitmqctl inside the root needs root (chroot)"
    [ -f "$MARKER" ] || unavailable "the 4.x root is not built yet; run scripts/rabbitmq4.sh"
    ensure_mounts
    ctl "$@"
}

cmd_stop() {
    [ "$(id -u)" = 0 ] || die "stopping the 4.x node needs root (chroot)"
    if [ ! -f "$MARKER" ]; then
        log "nothing to stop: the 4.x root is not built"
        return 0
    fi
    mkdir -p "$STATE"
    exec 9>"$LOCK"
    flock 9
    local pids=()
    mapfile -t pids < <(node_pids)
    if [ ${#pids[@]} -gt 0 ]; then
        ensure_mounts
        log "stopping node $NODE"
        ctl -q stop >&2 || true
        for _ in $(seq 30); do
            mapfile -t pids < <(node_pids)
            [ ${#pids[@]} -eq 0 ] && break
            sleep 1
        done
        if [ ${#pids[@]} -gt 0 ]; then
            log "node $NODE did not stop; killing pid(s) ${pids[*]}"
            kill "${pids[@]}" 2>/dev/null || true
            sleep 3
            mapfile -t pids < <(node_pids)
            [ ${#pids[@]} -eq 0 ] || kill -9 "${pids[@]}" 2>/dev/null || true
        fi
    else
        log "node $NODE is not running"
    fi
    rm -f "$ROOT/var/lib/rabbitmq/mnesia/$NODE.pid"
    # Leave ROOT/proc mounted only while some process still runs in the root (an epmd that
    # the node started because none ran, and which the host's node may be using now).
    local d busy=
    for d in /proc/[0-9]*; do
        [ "$(readlink "$d/root" 2>/dev/null)" = "$ROOT" ] && busy=1 && break
    done
    [ -n "$busy" ] || unmount_all
}

case "${1:-start}" in
start) cmd_start ;;
ctl)
    shift
    cmd_ctl "$@"
    ;;
stop) cmd_stop ;;
-h | --help | help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' ;;
*)
    echo "usage: $0 [start | ctl RABBITMQCTL-ARGS... | stop]" >&2
    exit 2
    ;;
esac
