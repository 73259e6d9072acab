"""The system scripts/chaos.py runs and how the other chaos modules reach it: the run's
settings, the processes (supervised, restarted), the Redis server and the fault proxies
of the run, an HTTP client of the api, and the look-ups of PostgreSQL, RabbitMQ and the
api's metrics that the faults, the load and the ledger share."""

import collections
import datetime
import decimal
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request

import harness
from fault_proxy import FaultProxy
from harness import ROOT

BIN = ROOT / "target/debug"
WORK = ROOT / "target/chaos"
SHORT = os.environ.get("CHAOS_SHORT") == "1"
SEED = int(os.environ.get("CHAOS_SEED", random.randrange(1 << 31)))
ORDERS = int(os.environ.get("CHAOS_ORDERS", 2000 if SHORT else 4000))
CLIENTS = int(os.environ.get("CHAOS_CLIENTS", 8))
SECONDS = float(os.environ.get("CHAOS_SECONDS", 40 if SHORT else 120))
LOAD_SECONDS = int(os.environ.get("CHAOS_LOAD_SECONDS", 10 if SHORT else 60))
DRAIN_SECONDS = 180

DB = "orders_chaos"
# Trust auth ignores it; it is here so the logs can be searched for it.
DB_PASSWORD = "chaos-Secret-4f1d9c"
DATABASE_URL = f"postgres://postgres:{DB_PASSWORD}@127.0.0.1:5432/{DB}"
VHOST = "chaos"
# CHAOS_CLUSTER=1: the broker is the three-node RabbitMQ 4 cluster of scripts/cluster.sh
# (AMQP 5674-5676), every process of the system names all three nodes, and the schedule
# kills nodes; otherwise one broker on CHAOS_AMQP_PORT, driven by CHAOS_RABBITMQCTL.
CLUSTER = os.environ.get("CHAOS_CLUSTER") == "1"
CLUSTER_SCRIPT = str(ROOT / "scripts/cluster.sh")
NODES = (1, 2, 3) if CLUSTER else (1,)
AMQP_PORTS = (5674, 5675, 5676) if CLUSTER else (int(os.environ.get("CHAOS_AMQP_PORT", 5672)),)
RABBITMQCTL = os.environ.get("CHAOS_RABBITMQCTL", "rabbitmqctl").split()
# The broker as the ledger's own tools reach it, direct: every node, as the binaries read
# AMQP_URL (`saga-worker dlq list`), and one URL per node for pika (which takes a list).
AMQP_URL = f"amqp://guest:guest@{','.join(f'127.0.0.1:{port}' for port in AMQP_PORTS)}/{VHOST}"
AMQP_NODE_URLS = [f"amqp://guest:guest@127.0.0.1:{port}/{VHOST}" for port in AMQP_PORTS]
# The cluster's nodes the fault schedule has killed and not yet restarted: rabbitmqctl
# goes to one that runs.
DOWN_NODES = set()
REDIS_PORT = 16390
# The system's processes reach the three servers through the fault proxies on these
# ports (silent partitions, failovers); the ledger's own psql, pika and rabbitmqctl go
# direct, so that they see the servers whatever the proxies do. A cluster's nodes each
# have a proxy of their own (18341, 18343, 18344), which fault together.
PG_PROXY_PORT, REDIS_PROXY_PORT = 18340, 18342
AMQP_PROXY_PORTS = (18341, 18343, 18344)[: len(AMQP_PORTS)]
SYSTEM_DATABASE_URL = f"postgres://postgres:{DB_PASSWORD}@127.0.0.1:{PG_PROXY_PORT}/{DB}"
SYSTEM_AMQP_URL = f"amqp://guest:guest@{','.join(f'127.0.0.1:{port}' for port in AMQP_PROXY_PORTS)}/{VHOST}"
SYSTEM_REDIS_URL = f"redis://127.0.0.1:{REDIS_PROXY_PORT}/0"
# How long a silent partition lasts (seeded), and how long the system has to recover
# from a silent fault before it is a violation.
PARTITION_SECONDS = (6, 8) if SHORT else (6, 12)
# Recovery here means every order from before the fault completed, which also waits for
# the broker to notice a frozen consumer (its heartbeats) and redeliver what it held, and
# for the faults that overlap it: measured 21-58 s in short runs. 90 s tells a stuck
# system from a slow one without flaking.
RECOVERY_SECONDS = 90
API_PORT = 18300
API = f"127.0.0.1:{API_PORT}"
CREDIT_LIMIT = decimal.Decimal(1000)
PRODUCTS, USERS = 24, 40


def log(*args):
    print(f"chaos {datetime.datetime.now():%H:%M:%S}:", *args, file=sys.stderr, flush=True)


def rabbitmqctl(node=None):
    """The rabbitmqctl command of the broker under test: in a cluster, of `node`, or of the
    first node that runs."""
    if not CLUSTER:
        return RABBITMQCTL
    node = node or next(n for n in NODES if n not in DOWN_NODES)
    return [CLUSTER_SCRIPT, "rabbitmq-ctl", str(node)]


def ctl(*args, check=True, node=None):
    """rabbitmqctl of the broker under test (in a cluster, of a node that runs)."""
    return harness.run(*rabbitmqctl(node), *args, check=check)


def cluster_up():
    """Starts the cluster's nodes that are down (scripts/cluster.sh waits until all three
    run and are joined) and forgets that any was killed."""
    # Its stderr (which nodes it started, any it had to start again) goes to the log.
    subprocess.run([CLUSTER_SCRIPT, "rabbitmq"], check=True, stdout=subprocess.DEVNULL, stderr=None, text=True)
    DOWN_NODES.clear()


def kill_node(node):
    """kill -9 of a cluster node's Erlang VM."""
    pid = harness.run(CLUSTER_SCRIPT, "rabbitmq-pid", str(node)).strip()
    if not pid:
        raise SystemExit(f"chaos: rabbitc{node} is not running")
    DOWN_NODES.add(node)
    os.kill(int(pid), signal.SIGKILL)


def quorum_leader(queue):
    """The number of the node leading a quorum queue of the run's vhost."""
    out = ctl("-q", "list_queues", "-p", VHOST, "--no-table-headers", "name", "leader")
    for name, leader in (line.split() for line in out.splitlines() if line.strip()):
        if name == queue:
            return int(re.fullmatch(r"rabbitc(\d)@localhost", leader).group(1))
    raise SystemExit(f"chaos: no leader of {queue} in {out!r}")


def psql(sql, database=DB):
    return harness.psql(database, "-F", "\t", "-c", sql)


def rows(sql):
    return [line.split("\t") for line in psql(sql).splitlines() if line]


# --- processes ---------------------------------------------------------------------


class Proc:
    """One process of the system, restarted whenever it is not running."""

    def __init__(self, name, command, env):
        self.name, self.command, self.env = name, command, env
        self.log = (WORK / "logs" / f"{name}.log").open("ab")
        self.proc = None
        self.killed = False  # by the fault schedule: restart without counting a crash
        self.held = False  # kept down on purpose for a moment
        self.crashes = []
        self.starts = 0

    def start(self):
        self.proc = harness.spawn(self.command, self.env, self.log)
        self.starts += 1

    def kill9(self):
        self.killed, self.held = True, True
        self.proc.kill()
        self.proc.wait()

    def check(self):
        if self.held or self.proc.poll() is None:
            return
        if not self.killed:
            self.crashes.append(self.proc.returncode)
            log(f"{self.name} exited by itself with {self.proc.returncode}; restarting")
        self.killed = False
        self.start()


def stop_all(procs):
    """SIGTERM to every process at once, then 15 s for all of them (a process that hangs
    on a connection frozen for good costs 15 s once, not once per process); one killed
    then counts as a crash."""
    started = [p for p in procs.values() if p.proc]
    killed = harness.stop_all([p.proc for p in started], 15)
    for p in started:
        if p.proc in killed:
            p.crashes.append("no exit within 15 s of SIGTERM")


def supervise(procs, stop):
    while not stop.wait(0.25):
        for proc in procs.values():
            proc.check()


def system():
    """The system's processes, which reach the servers through the fault proxies."""
    common = dict(
        os.environ,
        DATABASE_URL=SYSTEM_DATABASE_URL,
        AMQP_URL=SYSTEM_AMQP_URL,
        REDIS_URL=SYSTEM_REDIS_URL,
        LOG_FORMAT="json",
        LOG_LEVEL="info",
        CREDIT_LIMIT=str(CREDIT_LIMIT),
    )
    common.pop("LOKI_URL", None)
    procs = [Proc("api", [str(BIN / "api")], dict(common, API_ADDR=API))]
    for i in (1, 2):
        relay_env = dict(common, METRICS_ADDR=f"127.0.0.1:{18310 + i}")
        procs.append(Proc(f"outbox-relay-{i}", [str(BIN / "outbox-relay")], relay_env))
        worker_env = dict(common, METRICS_ADDR=f"127.0.0.1:{18320 + i}")
        procs.append(Proc(f"saga-worker-{i}", [str(BIN / "saga-worker")], worker_env))
    procs.append(Proc("customer-simulator", [str(BIN / "customer-simulator")], common))
    return {p.name: p for p in procs}


class Redis:
    """A Redis server of this run's own, so that restarting it touches nothing else."""

    def __init__(self):
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(REDIS_PORT),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(WORK),
            ],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(50):
            if harness.run("redis-cli", "-p", str(REDIS_PORT), "ping", check=False).strip() == "PONG":
                return
            time.sleep(0.1)
        raise SystemExit("chaos: redis-server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class ProxyGroup:
    """The proxies of a cluster's nodes, faulted together as one server's."""

    def __init__(self, proxies):
        self.proxies = proxies
        self.name = proxies[0].name
        self.port = ", ".join(str(p.port) for p in proxies)

    def start(self):
        for proxy in self.proxies:
            proxy.start()
        return self

    def _each(self, method):
        return sum(getattr(proxy, method)() or 0 for proxy in self.proxies)

    def stop(self):
        self._each("stop")

    def partition(self):
        return self._each("partition")

    def heal(self):
        self._each("heal")

    def freeze_current_for_good(self):
        return self._each("freeze_current_for_good")

    def stats(self):
        totals = collections.Counter()
        for proxy in self.proxies:
            totals.update(proxy.stats())
        return dict(totals)


def proxies():
    """The fault proxies between the system's processes and the three servers."""
    gates = {
        "pg": FaultProxy(PG_PROXY_PORT, "127.0.0.1", 5432, name="pg proxy"),
        "rabbitmq": ProxyGroup(
            [
                FaultProxy(port, "127.0.0.1", upstream, name="rabbitmq proxy")
                for port, upstream in zip(AMQP_PROXY_PORTS, AMQP_PORTS, strict=True)
            ]
        ),
        "redis": FaultProxy(REDIS_PROXY_PORT, "127.0.0.1", REDIS_PORT, name="redis proxy"),
    }
    return gates


# --- the api ---------------------------------------------------------------------------


class Client:
    def __init__(self, timeout=30):
        self.conn, self.timeout = None, timeout

    def call(self, method, path, body=None):
        """(status, parsed body); status 0 when the connection failed."""
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(API, timeout=self.timeout)
                headers = {"Content-Type": "application/json"} if body is not None else {}
                self.conn.request(method, path, json.dumps(body) if body is not None else None, headers)
                response = self.conn.getresponse()
                data = response.read()
                return response.status, (json.loads(data) if data else None)
            except (OSError, http.client.HTTPException):
                if self.conn:
                    self.conn.close()
                self.conn = None
        return 0, None


def product_id(i):
    return f"00000000-0000-4000-8000-{i:012d}"


def user_id(i):
    return f"10000000-0000-4000-8000-{i:012d}"


def address_id(i):
    return f"20000000-0000-4000-8000-{i:012d}"


def api_counter(name, label=""):
    """The sum of every series of one of the api's counters (those with label, such as
    'result="hit"', if given)."""
    with urllib.request.urlopen(f"http://{API}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(value)
        for series, value in re.findall(r"^(\S+) (\S+)$", text, re.M)
        if (series == name or series.startswith(name + "{")) and label in series
    )


# --- the servers -------------------------------------------------------------------------


def terminate_service_sessions():
    """Kills the service's PostgreSQL sessions on the chaos database; returns how many."""
    return int(
        psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = '{DB}' AND application_name = 'order-service' AND pid <> pg_backend_pid()"
        )
    )


def rabbit_connections():
    out = ctl("-q", "list_connections", "-p", VHOST, "--no-table-headers", "name", check=False)
    return [line for line in out.splitlines() if line.strip()]


def queue_depths():
    # `messages` counts the ready and the unacked.
    out = ctl("-q", "list_queues", "-p", VHOST, "--no-table-headers", "name", "messages")
    return {name: int(count) for name, count in (line.split() for line in out.splitlines() if line.strip())}


def broker_version():
    out = ctl("-q", "eval", "rabbit_misc:version().", check=False).strip().strip('"')
    return out or "unknown"
