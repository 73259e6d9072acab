"""`make chaos`: faults injected into the running system, then a ledger says what happened.

Runs api, two outbox-relays, two saga-workers and the customer simulator as real
processes (target/debug) against the local PostgreSQL and RabbitMQ (a database and a
vhost of its own) and a Redis server of its own (so restarting it disturbs nothing
else). Several clients create orders while a seeded fault schedule SIGKILLs relays and
workers, closes RabbitMQ connections from the broker, stops and starts the RabbitMQ
application, restarts Redis, terminates the service's PostgreSQL connections and
injects poison replies. Then everything heals, the system drains (bounded), and the
ledger is checked: nothing lost, nothing duplicated, nothing stuck. A second part
loads the api at saturation, then again while its PostgreSQL connections are killed.

Broker faults of the second round: the broker cancels the workers' consumer (CustomerSaga
deleted while empty, then redeclared by the workers), and a memory alarm blocks every
publisher for a few seconds.

Silent networks: the system's processes reach PostgreSQL, RabbitMQ and Redis each through
a fault proxy of this run (scripts/fault_proxy.py, ports 18340-18342; the ledger's own
psql, pika and rabbitmqctl go direct), and for each of the three the schedule adds
- a silent partition: every connection, open and new, frozen (nothing forwarded,
  nothing closed; new connections accepted but not forwarded) for 6 to 12 s (6 to 8 s
  in the short variant), then healed: what the connections held goes on;
- a failover behind a stable address: the connections open then are frozen for good
  (never forwarded again, never closed until the run ends), while new ones pass at once.
The faults above that act on the servers themselves (close_connection, stop_app, the
Redis restart, pg_terminate_backend) go through the proxies as they would through a
network. After each silent fault the `recovery` line of the summary says how long from
the network being usable again (the heal, or the failover itself) until the system had
recovered: for PostgreSQL and RabbitMQ, no outbox row and no Pending order from before
that moment left, and an order created after it completed (once the clients are done,
the probe places one of its own, which the ledger checks like theirs); for Redis, the
api's cache answering reads again (a hit or a miss, not an error). No recovery within
60 s is a violation, which says what was still wrong. At the end every process is
stopped at once (15 s for all), then the proxies, which closes the connections frozen
for good.

CHAOS_SHORT=1 is the variant `make test` runs (about two minutes); CHAOS_SEED fixes the
schedule (printed at the start); CHAOS_ORDERS, CHAOS_CLIENTS and CHAOS_SECONDS override
the sizes. CHAOS_AMQP_PORT and CHAOS_RABBITMQCTL choose the broker (`make test` runs it
on RabbitMQ 3.10, then on RabbitMQ 4 from scripts/rabbitmq4.sh). Exits non-zero on any
violation. Needs pika (scripts/tools.sh installs it).

CHAOS_CLUSTER=1 runs it on the three-node RabbitMQ 4 cluster of scripts/cluster.sh (started
if it is down; `make test` runs this too): every process names the three nodes (each
behind a proxy of its own, the three faulted together), and the schedule adds node kills:
kill -9 of the node leading CustomerSaga, of another node, and of two nodes at once (no
majority for 8-12 s), each restarted by scripts/cluster.sh. The recovery from a node loss
that leaves a majority is measured from the kill; from the majority loss, from the
majority's return.

This file runs the parts, in order: chaos_system.py (the settings, the processes, the
servers of the run), chaos_load.py (the order stream, the load), chaos_faults.py (the
schedule, the recovery probes) and chaos_ledger.py (the checks).
"""

import dataclasses
import os
import random
import shutil
import subprocess
import sys
import threading
import time

import chaos_ledger
import harness
from chaos_faults import FaultSchedule, Recovery, poison_messages
from chaos_load import clients, load_phase, seed
from chaos_system import (
    AMQP_PORTS,
    API,
    BIN,
    CLIENTS,
    CLUSTER,
    DATABASE_URL,
    DB,
    DRAIN_SECONDS,
    LOAD_SECONDS,
    ORDERS,
    RECOVERY_SECONDS,
    SECONDS,
    SEED,
    SHORT,
    VHOST,
    WORK,
    Redis,
    broker_version,
    cluster_up,
    ctl,
    log,
    proxies,
    rabbitmqctl,
    stop_all,
    supervise,
    system,
)


@dataclasses.dataclass
class Outcome:
    """What a run found, for the summary."""

    results: list
    poison: list
    injected: dict
    recovery: Recovery
    ledger: dict
    mismatched: int
    plain: dict
    killed: dict
    half: int
    rss: dict


def setup():
    """A fresh work directory, database, vhost and ledger queue."""
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "logs").mkdir(parents=True)
    # Only `api migrate` migrates (the processes wait for it).
    harness.create_database(DB, BIN / "api", dict(os.environ, DATABASE_URL=DATABASE_URL, LOG_LEVEL="warn"), force=True)
    if CLUSTER:
        try:
            cluster_up()
        except subprocess.CalledProcessError as e:
            if e.returncode == 3:  # scripts/cluster.sh: no cluster here (its line above says why)
                print("SKIPPED: the chaos run's cluster mode (scripts/cluster.sh could not start the cluster)")
                sys.exit(0)
            raise
    harness.create_vhost(VHOST, rabbitmqctl())
    chaos_ledger.declare_ledger_queue()


def start_proxies(redis):
    gates = proxies()
    for proxy in gates.values():
        try:
            proxy.start()
        except OSError as e:
            for started in gates.values():
                started.stop()
            redis.stop()
            raise SystemExit(f"chaos: {proxy.name} cannot listen on port {proxy.port}: {e}") from e
    return gates


def exercise(rng, procs, redis, gates, violations):
    """The order stream under the fault schedule, the heal and the drain, the ledger, then
    the load; adds every violation found to `violations`."""
    harness.wait_http(f"http://{API}/readyz", "chaos", seconds=120, timeout=30)
    prices = seed(rng)
    poison = poison_messages()
    schedule = FaultSchedule(rng, procs, redis, poison, gates, prices)
    results = []
    start = time.time()
    threads = clients(prices, results)
    injected = schedule.run(start)
    for t in threads:
        t.join()
    schedule.stream_over()
    log(f"{len(results)} orders sent in {time.time() - start:.0f} s; healing and draining")
    # Heal: everything running (the supervisor restarts), the broker up, no partition
    # (each heals itself; the connections frozen for good stay so until the end).
    if CLUSTER:
        cluster_up()
    else:
        ctl("-q", "await_startup")
    # The recovery probes first: the orders they place are drained like the others.
    recovery = schedule.recovery()
    for kind, wrongs in sorted(recovery.unrecovered.items()):
        for wrong in wrongs:
            violations.append(f"{kind}: not recovered within {RECOVERY_SECONDS} s ({wrong})")
    busy = chaos_ledger.drain(time.time() + DRAIN_SECONDS)
    if any(busy.values()):
        violations.append(f"not drained within {DRAIN_SECONDS} s: {busy}")
    ledger = chaos_ledger.check_ledger(results + recovery.canaries, poison, violations)
    mismatched = chaos_ledger.check_cache(violations)

    log(f"load: {LOAD_SECONDS} s at saturation, then {LOAD_SECONDS} s while PostgreSQL connections are killed")
    plain = load_phase(False, violations)
    killed = load_phase(True, violations)
    half = chaos_ledger.half_written_orders(violations)
    rss = {name: harness.peak_rss_mb(p.proc.pid) for name, p in procs.items() if not name.startswith("customer")}
    if rss["api"] > 64:
        violations.append(f"api peak RSS {rss['api']:.1f} MB (bound 64 MB)")
    return Outcome(results, poison, injected, recovery, ledger, mismatched, plain, killed, half, rss)


def summary(run, procs, gates, seconds, violations):
    ledger, recovery, plain, killed = run.ledger, run.recovery, run.plain, run.killed
    statuses = ", ".join(f"{s or 'no answer'}: {n}" for s, n in sorted(ledger["statuses"].items()))
    recovered = ", ".join(
        f"{kind} {', '.join(f'{s:.1f} s' for s in times)}" for kind, times in sorted(recovery.times.items())
    )
    not_recovered = "".join(
        f"; {kind}: none within {RECOVERY_SECONDS} s ×{len(wrongs)}"
        for kind, wrongs in sorted(recovery.unrecovered.items())
    )
    return [
        f"chaos summary (seed {SEED}{', short' if SHORT else ''}, {seconds:.0f} s)",
        f"  orders: {len(run.results)} sent by {CLIENTS} clients, {len(recovery.canaries)} by the recovery probes"
        f" ({statuses})",
        "  faults: " + ", ".join(f"{kind} ×{n}" for kind, n in sorted(run.injected.items())),
        "  restarts: " + ", ".join(f"{n} {p.starts - 1}" for n, p in procs.items() if p.starts > 1),
        f"  events: {ledger['events']} written, all seen by the Order.* consumer: {ledger['events_unseen'] == 0}"
        f" ({ledger['redelivered']} seen more than once)",
        f"  DLQ: {ledger['dlq']} dead letters ({dict(ledger['kinds'])}), {len(run.poison)} injected,"
        f" {ledger['dlq_duplicates']} duplicates",
        f"  lost {ledger['lost']}, duplicate effects {ledger['duplicate_effects']}, stuck {ledger['stuck']},"
        f" half-written {ledger['half_written'] + run.half}, cache mismatches {run.mismatched}",
        f"  load: {plain['rps']:.0f} req/s {plain['statuses']}; with {killed['kills']} connections killed:"
        f" {killed['rps']:.0f} req/s {killed['statuses']} ({killed['interrupted']} requests' transactions"
        f" interrupted, {killed['replaced']} dead connections replaced without a failure),"
        f" then {killed['recovery_503s']} 503s before 20 orders in a row went through",
        "  recovery: " + (recovered or "none measured") + not_recovered,
        "  silent network: " + ("; ".join(recovery.silences) or "no silent fault"),
        "  proxies: "
        + ", ".join(
            f"{name} {stats['accepted']} connections, {stats['bytes_up'] / 1e6:.1f} MB up,"
            f" {stats['bytes_down'] / 1e6:.1f} MB down, {stats['refused']} refused upstream"
            for name, stats in ((name, proxy.stats()) for name, proxy in gates.items())
        ),
        f"  broker: RabbitMQ {broker_version()}"
        + (f", a cluster of {len(AMQP_PORTS)} nodes" if CLUSTER else "")
        + f" on port {', '.join(map(str, AMQP_PORTS))}",
        "  peak RSS: " + ", ".join(f"{n} {mb:.1f} MB" for n, mb in run.rss.items()),
        f"  violations: {len(violations)}",
    ]


def main():
    rng = random.Random(SEED)
    log(
        f"seed {SEED}; {ORDERS} orders from {CLIENTS} clients over {SECONDS:.0f} s{' (short variant)' if SHORT else ''}"
    )
    setup()
    redis = Redis()
    redis.start()
    gates = start_proxies(redis)
    procs = system()
    for proc in procs.values():
        proc.start()
    stop_supervisor = threading.Event()
    supervisor = threading.Thread(target=supervise, args=(procs, stop_supervisor))
    supervisor.start()
    violations = []
    started = time.time()
    try:
        run = exercise(rng, procs, redis, gates, violations)
    finally:
        stop_supervisor.set()
        supervisor.join()
        stop_all(procs)
        redis.stop()
        # Last: closes the connections frozen for good.
        for proxy in gates.values():
            proxy.stop()
    for name, p in procs.items():
        if p.crashes and name != "customer-simulator":
            violations.append(f"{name} exited by itself: {p.crashes}")
    chaos_ledger.check_logs(violations)

    print("\n".join(summary(run, procs, gates, time.time() - started, violations)))
    for v in violations[:50]:
        print("  -", v)
    sys.exit(1 if violations else 0)


if __name__ == "__main__":
    main()
