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
"""

import collections
import datetime
import decimal
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pika

from fault_proxy import FaultProxy

ROOT = Path(__file__).resolve().parent.parent
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
PG = "postgres://postgres@127.0.0.1:5432"
DATABASE_URL = f"postgres://postgres:{DB_PASSWORD}@127.0.0.1:5432/{DB}"
VHOST = "chaos"
AMQP_PORT = int(os.environ.get("CHAOS_AMQP_PORT", 5672))
AMQP_URL = f"amqp://guest:guest@127.0.0.1:{AMQP_PORT}/{VHOST}"
RABBITMQCTL = os.environ.get("CHAOS_RABBITMQCTL", "rabbitmqctl").split()
REDIS_PORT = 16390
# The system's processes reach the three servers through the fault proxies on these
# ports (silent partitions, failovers); the ledger's own psql, pika and rabbitmqctl go
# direct, so that they see the servers whatever the proxies do.
PG_PROXY_PORT, AMQP_PROXY_PORT, REDIS_PROXY_PORT = 18340, 18341, 18342
SYSTEM_DATABASE_URL = f"postgres://postgres:{DB_PASSWORD}@127.0.0.1:{PG_PROXY_PORT}/{DB}"
SYSTEM_AMQP_URL = f"amqp://guest:guest@127.0.0.1:{AMQP_PROXY_PORT}/{VHOST}"
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
LEDGER_QUEUE = "chaos.ledger"
PRODUCTS, USERS = 24, 40


def log(*args):
    print(f"chaos {datetime.datetime.now():%H:%M:%S}:", *args, file=sys.stderr, flush=True)


def run(*args, check=True):
    return subprocess.run(args, check=check, text=True, capture_output=True).stdout


def ctl(*args, check=True):
    """rabbitmqctl of the broker under test."""
    return run(*RABBITMQCTL, *args, check=check)


def psql(sql, database=DB):
    return run("psql", f"{PG}/{database}", "-v", "ON_ERROR_STOP=1", "-qAt", "-F", "\t", "-c", sql)


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
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        self.starts += 1

    def kill9(self):
        self.killed, self.held = True, True
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def check(self):
        if self.held or self.proc.poll() is None:
            return
        if not self.killed:
            self.crashes.append(self.proc.returncode)
            log(f"{self.name} exited by itself with {self.proc.returncode}; restarting")
        self.killed = False
        self.start()

    def stop(self):
        stop_all({self.name: self})


def stop_all(procs):
    """SIGTERM to every process at once, then 15 s for all of them: a process that hangs
    on a connection frozen for good costs 15 s once, not once per process."""
    running = [p for p in procs.values() if p.proc and p.proc.poll() is None]
    for p in running:
        p.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 15
    for p in running:
        try:
            p.proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.proc.kill()
            p.proc.wait()
            p.crashes.append("no exit within 15 s of SIGTERM")


class Redis:
    """A Redis server of this run's own, so that restarting it touches nothing else."""

    def __init__(self):
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(WORK)], stdout=subprocess.DEVNULL)
        for _ in range(50):
            if run("redis-cli", "-p", str(REDIS_PORT), "ping", check=False).strip() == "PONG":
                return
            time.sleep(0.1)
        raise SystemExit("chaos: redis-server did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def proxies():
    """The fault proxies between the system's processes and the three servers."""
    return {name: FaultProxy(port, "127.0.0.1", upstream, name=f"{name} proxy")
            for name, port, upstream in (("pg", PG_PROXY_PORT, 5432), ("rabbitmq", AMQP_PROXY_PORT, AMQP_PORT),
                                         ("redis", REDIS_PROXY_PORT, REDIS_PORT))}


def system():
    """The system's processes, which reach the servers through the fault proxies."""
    common = dict(os.environ, DATABASE_URL=SYSTEM_DATABASE_URL, AMQP_URL=SYSTEM_AMQP_URL, REDIS_URL=SYSTEM_REDIS_URL,
                  LOG_FORMAT="json", LOG_LEVEL="info", CREDIT_LIMIT=str(CREDIT_LIMIT))
    common.pop("LOKI_URL", None)
    procs = [Proc("api", [str(BIN / "api")], dict(common, API_ADDR=API))]
    for i in (1, 2):
        procs.append(Proc(f"outbox-relay-{i}", [str(BIN / "outbox-relay")],
                          dict(common, METRICS_ADDR=f"127.0.0.1:{18310 + i}")))
        procs.append(Proc(f"saga-worker-{i}", [str(BIN / "saga-worker")],
                          dict(common, METRICS_ADDR=f"127.0.0.1:{18320 + i}")))
    procs.append(Proc("customer-simulator", [str(BIN / "customer-simulator")], common))
    return {p.name: p for p in procs}


def supervise(procs, stop):
    while not stop.wait(0.25):
        for proc in procs.values():
            proc.check()


# --- HTTP ----------------------------------------------------------------------------


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


def wait_http(url, seconds=120):
    deadline = time.time() + seconds
    client = Client()
    while time.time() < deadline:
        status, _ = client.call("GET", url)
        if status == 200:
            return
        time.sleep(0.3)
    raise SystemExit(f"chaos: {url} did not answer 200 within {seconds} s")


def product_id(i):
    return f"00000000-0000-4000-8000-{i:012d}"


def user_id(i):
    return f"10000000-0000-4000-8000-{i:012d}"


def address_id(i):
    return f"20000000-0000-4000-8000-{i:012d}"


def seed(rng):
    client = Client()
    prices = {}
    for i in range(1, PRODUCTS + 1):
        price = decimal.Decimal(rng.randrange(5000, 60000)) / 100
        prices[product_id(i)] = price
        status, body = client.call("POST", "/api/v1/products/", {"productID": product_id(i), "name": f"Chaos {i}",
                                                                 "price": float(price), "discount": 0,
                                                                 "description": "chaos"})
        assert status == 204, (status, body)
    for i in range(1, USERS + 1):
        status, body = client.call("POST", "/api/v1/address/", {"addressID": address_id(i), "buildingNumber": i,
                                                                "streetName": "Main", "city": "Chaos",
                                                                "country": "Testland"})
        assert status == 204, (status, body)
        status, body = client.call("POST", "/api/v1/users/", {"userID": user_id(i), "username": f"user{i}",
                                                              "addressID": address_id(i)})
        assert status == 204, (status, body)
    return prices


# --- the order stream -----------------------------------------------------------------


def clients(prices, results):
    """CLIENTS threads create ORDERS orders, paced over SECONDS, and read the users'
    cached lists between them (so the cache is filled while statuses change)."""
    per_client = ORDERS // CLIENTS
    interval = SECONDS / per_client

    def client(n):
        rng = random.Random(SEED * 100 + n)
        http_client = Client()
        start = time.time()
        for k in range(per_client):
            delay = start + k * interval - time.time()
            if delay > 0:
                time.sleep(delay)
            products = rng.sample(sorted(prices), 3)
            user = rng.randrange(1, USERS + 1)
            order = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            status, body = http_client.call("POST", "/api/v1/orders/", {
                "orderID": order, "paymentMethod": rng.choice(["Online", "Card"]), "productsIds": products,
                "userID": user_id(user), "deliveryAddress": address_id(user)})
            results.append({"order": order, "status": status, "body": body, "user": user_id(user),
                            "total": sum(prices[p] for p in products), "products": products})
            if k % 4 == 0:
                http_client.call("GET", f"/api/v1/orders/user/{user_id(rng.randrange(1, USERS + 1))}?limit=1000")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    return threads


# --- faults ---------------------------------------------------------------------------


def rabbit_connections():
    out = ctl("-q", "list_connections", "-p", VHOST, "--no-table-headers", "name", check=False)
    return [line for line in out.splitlines() if line.strip()]


def publish_confirmed(messages, queue="CustomerSaga", deadline=120):
    """Publishes straight to a queue with confirms, retrying while the broker is down."""
    end = time.time() + deadline
    while True:
        try:
            params = pika.URLParameters(AMQP_URL)
            params.connection_attempts, params.retry_delay = 1, 0
            with pika.BlockingConnection(params) as connection:
                channel = connection.channel()
                channel.confirm_delivery()
                for message_id, body in messages:
                    channel.basic_publish("", queue, body, pika.BasicProperties(
                        message_id=message_id, delivery_mode=2, content_type="application/json"), mandatory=True)
                return
        except pika.exceptions.AMQPError as e:
            if time.time() > end:
                raise
            log(f"publish failed ({type(e).__name__}), retrying")
            time.sleep(1)


def terminate_service_sessions():
    """Kills the service's PostgreSQL sessions on the chaos database; returns how many."""
    return int(psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    f"WHERE datname = '{DB}' AND application_name = 'order-service' AND pid <> pg_backend_pid()"))


def poison_messages():
    messages = []
    for n in range(3):
        messages += [
            (f"chaos-poison-malformed-{n}", b"{not json"),
            (f"chaos-poison-missing-{n}", json.dumps({"orderID": str(uuid.uuid4())}).encode()),
            (f"chaos-poison-bad-id-{n}", json.dumps({"orderID": "not-a-uuid", "orderType": "Approved"}).encode()),
            (f"chaos-poison-bad-type-{n}", json.dumps({"orderID": str(uuid.uuid4()), "orderType": "Maybe"}).encode()),
            (f"chaos-poison-unknown-order-{n}",
             json.dumps({"orderID": str(uuid.uuid4()), "orderType": "Approved"}).encode()),
        ]
    return messages


# Seconds from each fault to the system's recovery, by fault kind.
recovery = collections.defaultdict(list)
# Silent faults the system had not recovered from RECOVERY_SECONDS later: by kind, what
# was still wrong then, once per fault.
unrecovered = collections.defaultdict(list)
# What each silent fault froze: "kind: details", in order.
silences = []
# The threads measuring recovery from the silent faults (joined before the drain).
probes = []
# Set once the clients have sent every order: a recovery probe then places an order of
# its own to see one complete.
stream_over = threading.Event()
# The orders the recovery probes placed (as the clients' results; the ledger checks them).
canaries = []


def place_canary(client, prices):
    """One order placed by a recovery probe, recorded for the ledger: (its id if it was
    taken (204), the status)."""
    rng = random.Random()
    products = rng.sample(sorted(prices), 3)
    user = rng.randrange(1, USERS + 1)
    order = str(uuid.uuid4())
    status, body = client.call("POST", "/api/v1/orders/", {
        "orderID": order, "paymentMethod": "Card", "productsIds": products, "userID": user_id(user),
        "deliveryAddress": address_id(user)})
    canaries.append({"order": order, "status": status, "body": body, "user": user_id(user),
                     "total": sum(prices[p] for p in products), "products": products})
    return (order if status == 204 else None), status


def not_recovered(server, back, state, prices):
    """What still shows that the system has not recovered from a silent fault of
    `server` whose network was usable again at `back` (a time.time()); nothing once it
    has. PostgreSQL and RabbitMQ: an outbox row or a Pending order older than `back`,
    or no order created since completed (once the clients have sent all theirs, the
    probe places one, again each second until the api takes it). Redis: the
    api's cache reads not answered by Redis (no hit nor miss counted since the last
    look, which reads a list itself to make one); the workers' invalidations that
    Redis did not take are the ledger's cache check's business."""
    if server == "redis":
        state["client"].call("GET", f"/api/v1/orders/user/{user_id(1)}?limit=1000")
        reads = api_counter("cache_requests_total", 'result="hit"') + api_counter("cache_requests_total",
                                                                                   'result="miss"')
        answered = state.get("reads") is not None and reads > state["reads"]
        state["reads"] = reads
        return [] if answered else ["the api's cache reads are not answered by Redis"]
    at = f"to_timestamp({back})"
    old_events, old_pending, completed = map(int, rows(
        f"SELECT (SELECT count(*) FROM outbox WHERE created_at < {at}),"
        f" (SELECT count(*) FROM orders WHERE saga_status = 'Pending' AND created_at < {at}),"
        f" (SELECT count(*) FROM orders WHERE saga_status <> 'Pending' AND created_at >= {at})")[0])
    wrong = []
    if old_events:
        wrong.append(f"{old_events} outbox rows from before still unpublished")
    if old_pending:
        wrong.append(f"{old_pending} orders from before still Pending")
    if not completed:
        wrong.append("no order created since has completed")
        if stream_over.is_set() and not state.get("canary") and time.time() > state.get("canary_at", 0) + 1:
            state["canary_at"] = time.time()
            state["canary"], status = place_canary(state["client"], prices)
            if not state["canary"]:
                wrong.append(f"the api did not take an order ({status or 'no answer'})")
    return wrong


def measure_recovery(kind, server, back, prices):
    """In a thread of its own (the schedule goes on): records in `recovery` how long
    after `back` the system had recovered from a silent fault of `server`, or in
    `unrecovered` what was still wrong RECOVERY_SECONDS later."""
    def probe():
        # The clients' timeout: an order the api took late is still answered.
        state, wrong = {"client": Client(timeout=30 if server != "redis" else 5)}, ["not looked at"]
        while time.time() < back + RECOVERY_SECONDS:
            try:
                wrong = not_recovered(server, back, state, prices)
                if not wrong:
                    recovery[kind].append(time.time() - back)
                    return
            except (OSError, subprocess.CalledProcessError, http.client.HTTPException) as e:
                wrong = [f"the probe failed ({type(e).__name__}: {e})"]
            time.sleep(0.25)
        unrecovered[kind].append("; ".join(wrong))
        log(f"{kind}: no recovery within {RECOVERY_SECONDS} s: {'; '.join(wrong)}")

    thread = threading.Thread(target=probe, name=f"recovery of {kind}", daemon=True)
    thread.start()
    probes.append(thread)


def fault_schedule(rng, procs, redis, poison, proxies, prices):
    """(at seconds, kind, action) in time order, over the order stream."""
    def kill(name):
        def act():
            procs[name].kill9()
            time.sleep(rng.uniform(0.5, 3))
            procs[name].held = False  # the supervisor restarts it
        return act

    def close_connections():
        for name in rabbit_connections():
            ctl("-q", "close_connection", name, "chaos: closed from the broker", check=False)

    def rabbit_restart():
        ctl("-q", "stop_app")
        time.sleep(rng.uniform(1, 4))
        ctl("-q", "start_app")
        ctl("-q", "await_startup")

    def redis_restart():
        redis.stop()
        time.sleep(rng.uniform(0.5, 2))
        redis.start()


    def inject_poison():
        publish_confirmed(poison)

    def cancel_consumers():
        """Has the broker cancel both workers' consumers by deleting CustomerSaga, losing
        nothing: the simulator (its only publisher here) is paused until the queue holds
        no message, ready or unacked (quorum queues refuse `delete_queue --if-empty`),
        and resumed once it is deleted; its replies meanwhile are unroutable and come
        back to it. The workers must redeclare the queue and consume again: records how
        long until both do. Returns False when the queue never emptied."""
        simulator = procs["customer-simulator"].proc
        simulator.send_signal(signal.SIGSTOP)
        try:
            # Queue statistics lag by up to 5 s: a reply published just before the pause
            # must show before an empty queue is believed.
            time.sleep(6)
            deadline = time.time() + 15
            while queue_depths().get("CustomerSaga", 0) and time.time() < deadline:
                time.sleep(0.1)
            if queue_depths().get("CustomerSaga", 0):
                log("CustomerSaga never empty for 15 s; consumers not cancelled this time")
                return False
            ctl("-q", "delete_queue", "-p", VHOST, "CustomerSaga")
        finally:
            simulator.send_signal(signal.SIGCONT)
        cancelled = time.time()
        while time.time() < cancelled + 60:
            consumers = ctl("-q", "list_consumers", "-p", VHOST, "--no-table-headers", "queue_name", check=False)
            if sum(1 for line in consumers.splitlines() if line.strip() == "CustomerSaga") >= 2:
                recovery["consumer cancelled"].append(time.time() - cancelled)
                return True
            time.sleep(0.1)
        log("the workers did not consume CustomerSaga again within 60 s")
        return True

    def memory_alarm():
        """Blocks every publisher of the broker for a few seconds, then restores the
        node's own watermark."""
        before = ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip().strip("{}")
        restore = ["absolute", before.split(",")[1]] if before.startswith("absolute") else [before.split(",")[-1]]
        ctl("-q", "set_vm_memory_high_watermark", "0.0000001")
        try:
            time.sleep(rng.uniform(4, 10))
        finally:
            ctl("-q", "set_vm_memory_high_watermark", *restore)
        cleared = time.time()
        # How long the backlog the alarm held back takes to leave once it clears.
        while time.time() < cleared + 60:
            if int(psql("SELECT count(*) FROM outbox WHERE created_at < now() - interval '1 second'")) == 0:
                recovery["memory alarm"].append(time.time() - cleared)
                return
            time.sleep(0.1)

    def silent_partition(name):
        """Every connection to the server, open and new, frozen for a few seconds, then
        healed; the recovery is measured from the heal."""
        def act():
            proxy = proxies[name]
            seconds = rng.uniform(*PARTITION_SECONDS)
            frozen = proxy.partition()
            try:
                time.sleep(seconds)
            finally:
                held = proxy.stats()["held"]
                proxy.heal()
            silences.append(f"{name} silent partition: {frozen} connections frozen for {seconds:.1f} s,"
                            f" {held} new ones held")
            log(f"{name}: healed after {seconds:.1f} s ({frozen} connections frozen, {held} new ones held)")
            measure_recovery(f"{name} silent partition", name, time.time(), prices)
        return act

    def failover(name):
        """The connections open now frozen for good (until the run ends), new ones pass:
        the recovery is measured from the failover itself."""
        def act():
            frozen = proxies[name].freeze_current_for_good()
            silences.append(f"{name} failover: {frozen} connections frozen for good")
            log(f"{name}: {frozen} connections frozen for good")
            measure_recovery(f"{name} failover", name, time.time(), prices)
        return act

    rounds = 1 if SHORT else 2
    faults = []
    for _ in range(rounds):
        for name in ("pg", "rabbitmq", "redis"):
            faults += [(f"{name} silent partition", silent_partition(name)), (f"{name} failover", failover(name))]
        faults += [("sigkill relay", kill(f"outbox-relay-{rng.choice((1, 2))}")),
                   ("sigkill worker", kill(f"saga-worker-{rng.choice((1, 2))}")),
                   ("broker closes connections", close_connections),
                   ("rabbitmq stop_app/start_app", rabbit_restart),
                   ("redis restart", redis_restart),
                   ("pg_terminate_backend", terminate_service_sessions),
                   ("pg_terminate_backend", terminate_service_sessions),
                   ("consumer cancelled", cancel_consumers),
                   ("memory alarm", memory_alarm)]
    faults.append(("poison replies", inject_poison))
    rng.shuffle(faults)
    # Spread over the stream, with a little jitter, leaving its last tenth quiet.
    step = SECONDS * 0.9 / len(faults)
    return [(i * step + rng.uniform(0, step / 2), kind, act) for i, (kind, act) in enumerate(faults)]


def inject(schedule, start, injected):
    for at, kind, act in schedule:
        delay = start + at - time.time()
        if delay > 0:
            time.sleep(delay)
        log(f"fault at {time.time() - start:5.1f} s: {kind}")
        if act() is not False:
            injected[kind] += 1


# --- the ledger ---------------------------------------------------------------------


def broker_version():
    out = ctl("-q", "eval", "rabbit_misc:version().", check=False).strip().strip('"')
    return out or "unknown"


def queue_depths():
    # `messages` counts the ready and the unacked.
    out = ctl("-q", "list_queues", "-p", VHOST, "--no-table-headers", "name", "messages")
    return {name: int(count) for name, count in (line.split() for line in out.splitlines() if line.strip())}


def drain(deadline):
    """Waits until no order is Pending, every outbox row is published and the saga
    queues are empty; returns what is still busy at the deadline."""
    while True:
        pending = int(psql("SELECT count(*) FROM orders WHERE saga_status = 'Pending'"))
        unpublished = int(psql("SELECT count(*) FROM outbox"))
        depths = queue_depths()
        busy = {"pending orders": pending, "unpublished outbox rows": unpublished,
                "CustomerSaga": depths.get("CustomerSaga", 0), "OrderSaga": depths.get("OrderSaga", 0)}
        if not any(busy.values()) or time.time() > deadline:
            return busy
        time.sleep(1)


def drain_ledger_queue():
    """Every message the independent consumer's queue holds: (message_id, type, orderID)."""
    seen = []
    with pika.BlockingConnection(pika.URLParameters(AMQP_URL)) as connection:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(LEDGER_QUEUE, auto_ack=True)
            if method is None:
                break
            order = json.loads(body).get("orderID")
            seen.append((properties.message_id, properties.type, order))
    return seen


def check_ledger(results, poison, violations):
    by_order = {r["order"]: r for r in results}
    statuses = collections.Counter(r["status"] for r in results)
    for r in results:
        if r["status"] not in (204, 503):
            violations.append(f"order {r['order']}: answered {r['status']} {r['body']}")

    db_orders = {o: (status, int(lines), total, int(retries)) for o, status, lines, total, retries in rows(
        "SELECT o.id, o.saga_status, (SELECT count(*) FROM order_products p WHERE p.order_id = o.id), "
        "o.total_price, o.saga_retries FROM orders o")}
    outbox = collections.defaultdict(list)
    # The outbox holds what is still unpublished; the relays move what they published.
    for event_id, aggregate, event_type, published in rows(
            "SELECT event_id, aggregate_id, event_type, published FROM ("
            " SELECT id, event_id, aggregate_id, event_type, false AS published FROM outbox"
            " UNION ALL"
            " SELECT id, event_id, aggregate_id, event_type, true FROM outbox_published) AS e ORDER BY id"):
        outbox[aggregate].append((event_id, event_type))
        if published != "t":
            violations.append(f"outbox event {event_id} ({event_type}) never published")

    lost = half_written = duplicate_effects = stuck = 0
    for order, r in by_order.items():
        row = db_orders.get(order)
        if row is None:
            if r["status"] == 204:
                lost += 1
                violations.append(f"order {order} answered 204 but does not exist")
            elif outbox.get(order):
                half_written += 1
                violations.append(f"order {order} answered {r['status']}: no order row, but outbox rows")
            continue
        status, lines, total, retries = row
        if lines != 3 or decimal.Decimal(total) != r["total"]:
            half_written += 1
            violations.append(f"order {order}: {lines} lines, total {total} (expected 3 lines, {r['total']})")
        if status == "Pending":
            stuck += 1
            violations.append(f"order {order} still Pending")
        elif status != ("Rejected" if r["total"] > CREDIT_LIMIT else "Approved") and retries == 0:
            violations.append(f"order {order} is {status} for a total of {r['total']}")
        events = collections.Counter(event_type for _, event_type in outbox.get(order, []))
        want = collections.Counter({"OrderCreateSaga": 1 + retries,
                                    "OrderCreated" if status == "Approved" else "OrderCanceled": 1})
        if status != "Pending" and events != want:
            duplicate_effects += 1
            violations.append(f"order {order} ({status}): outbox events {dict(events)}, expected {dict(want)}")
    for order in set(db_orders) - set(by_order):
        violations.append(f"order {order} exists but no client created it")

    # The independent consumer: every event at least once, each order's in outbox order.
    seen = drain_ledger_queue()
    first_seen = {}
    for i, (message_id, _, _) in enumerate(seen):
        first_seen.setdefault(message_id, i)
    redelivered = len(seen) - len(first_seen)
    unseen = 0
    for order, events in outbox.items():
        missing = [e for e, _ in events if e not in first_seen]
        unseen += len(missing)
        for event_id in missing:
            violations.append(f"event {event_id} of order {order} never reached the Order.* consumer")
        arrival = sorted((first_seen[e], e) for e, _ in events if e in first_seen)
        if [e for _, e in arrival] != [e for e, _ in events if e in first_seen]:
            violations.append(f"order {order}: events arrived out of order")

    # Saga queues empty, and the DLQ holds exactly the poison (read with our own tool).
    depths = queue_depths()
    for queue in ("CustomerSaga", "OrderSaga"):
        if depths.get(queue, 0):
            violations.append(f"{queue} still holds {depths[queue]} messages")
    env = dict(os.environ, AMQP_URL=AMQP_URL, DATABASE_URL=DATABASE_URL)
    listed = subprocess.run([str(BIN / "saga-worker"), "dlq", "list"], env=env, check=True, text=True,
                            capture_output=True).stdout
    # The counts by kind come first, then one line per dead letter.
    letters = [line for line in map(json.loads, filter(str.strip, listed.splitlines())) if "message_id" in line]
    in_dlq = collections.Counter(letter["message_id"] for letter in letters)
    injected = {message_id for message_id, _ in poison}
    if set(in_dlq) != injected:
        violations.append(f"DLQ holds {sorted(set(in_dlq) - injected)} not injected, "
                          f"misses {sorted(injected - set(in_dlq))}")
    dlq_duplicates = sum(n - 1 for n in in_dlq.values())
    return {"statuses": statuses, "lost": lost, "half_written": half_written, "duplicate_effects": duplicate_effects,
            "stuck": stuck, "events": sum(len(e) for e in outbox.values()), "events_unseen": unseen,
            "redelivered": redelivered, "dlq": len(letters), "dlq_duplicates": dlq_duplicates,
            "kinds": collections.Counter(letter["kind"] for letter in letters)}


def check_cache(violations):
    """Every user's list through the api (Redis, filled on a miss) equals PostgreSQL's."""
    client = Client()
    approved = collections.defaultdict(set)
    for order, user in rows("SELECT id, user_id FROM orders WHERE saga_status = 'Approved' AND NOT deleted"):
        approved[user].add(order)
    mismatched = 0
    for i in range(1, USERS + 1):
        for attempt in ("first read", "second read"):
            # A 503 (with Retry-After) is the api saying "not now", not a stale page: asked
            # again for up to 30 s. (Seen once: three reads 30 s after a PostgreSQL failover
            # answered 503 for 12 s, each after its 3 s acquire bound.)
            deadline = time.time() + 30
            while True:
                status, body = client.call("GET", f"/api/v1/orders/user/{user_id(i)}?limit=1000")
                if status != 503 or time.time() > deadline:
                    break
                time.sleep(1)
            cached = {o["OrderID"] for o in body["orders"]} if status == 200 else None
            if cached != approved[user_id(i)]:
                mismatched += 1
                violations.append(f"user {user_id(i)} ({attempt}): cache says {status} with "
                                  f"{len(cached or ())} orders, PostgreSQL {len(approved[user_id(i)])}")
    return mismatched


def check_logs(violations):
    for path in sorted((WORK / "logs").glob("*.log")):
        text = path.read_text(errors="replace")
        if DB_PASSWORD in text:
            violations.append(f"{path.name} contains the database password")
        if "panicked at" in text:
            violations.append(f"{path.name} records a panic")


# --- load with faults -------------------------------------------------------------------


def api_counter(name, label=""):
    """The sum of every series of one of the api's counters (those with label, such as
    'result="hit"', if given)."""
    with urllib.request.urlopen(f"http://{API}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(value) for series, value in re.findall(r"^(\S+) (\S+)$", text, re.M)
               if (series == name or series.startswith(name + "{")) and label in series)


def load_phase(kill_connections, violations):
    """wrk at saturation on a mix of routes; with kill_connections, the api's PostgreSQL
    connections are terminated every 200 ms meanwhile. A killed connection that had done
    no work yet is replaced and its request goes on; only a request whose transaction
    (or every retry of its read) was cut may answer 503, and the api counts those."""
    env = dict(os.environ, CHAOS_USERS=str(USERS), CHAOS_PRODUCTS=str(PRODUCTS))
    interrupted_before = api_counter("db_requests_interrupted_total")
    replaced_before = api_counter("db_connections_lost_total")
    stop = threading.Event()
    kills = 0

    def killer():
        nonlocal kills
        while not stop.wait(0.2):
            kills += terminate_service_sessions()

    thread = threading.Thread(target=killer)
    if kill_connections:
        thread.start()
    out = subprocess.run(["wrk", "-t", "2", "-c", "32", "-d", f"{LOAD_SECONDS}s", "-s",
                          str(ROOT / "scripts/chaos_load.lua"), f"http://{API}"],
                         check=True, text=True, capture_output=True, env=env).stdout
    stop.set()
    if kill_connections:
        thread.join()
    counts = {int(s): int(n) for s, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)}
    interrupted = int(api_counter("db_requests_interrupted_total") - interrupted_before)
    replaced = int(api_counter("db_connections_lost_total") - replaced_before)
    if counts.get(503, 0) > interrupted:
        violations.append(f"load{' with kills' if kill_connections else ''}: {counts[503]} answers 503, "
                          f"but only {interrupted} requests had their transaction interrupted")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    allowed = {200, 204, 503} if kill_connections else {200, 204}
    for status, n in counts.items():
        if status not in allowed:
            violations.append(f"load{' with kills' if kill_connections else ''}: {n} answers {status}")
    # The api recovers by itself: orders go through again, 20 in a row, at once.
    client = Client()
    deadline, streak, failed = time.time() + 10, 0, collections.Counter()
    while streak < 20 and time.time() < deadline:
        status, body = client.call("POST", "/api/v1/orders/", {
            "orderID": str(uuid.uuid4()), "paymentMethod": "Cash", "productsIds": [product_id(1)],
            "userID": user_id(1), "deliveryAddress": address_id(1)})
        streak = streak + 1 if status == 204 else 0
        if status != 204:
            failed[status] += 1
    if streak < 20 or set(failed) - {503}:
        violations.append(f"after the load{' with kills' if kill_connections else ''}: no recovery within 10 s "
                          f"({dict(failed)} on the way)")
    return {"rps": rps, "statuses": counts, "kills": kills, "recovery_503s": failed[503],
            "interrupted": interrupted, "replaced": replaced}


def half_written_orders(violations):
    broken = rows("SELECT o.id FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_products p WHERE p.order_id = o.id)"
                  " OR NOT EXISTS (SELECT 1 FROM (SELECT aggregate_id, event_type FROM outbox UNION ALL"
                  " SELECT aggregate_id, event_type FROM outbox_published) x WHERE x.aggregate_id = o.id "
                  "AND x.event_type = 'OrderCreateSaga')")
    for (order,) in broken:
        violations.append(f"order {order} is half-written (no lines or no OrderCreateSaga event)")
    return len(broken)


def peak_rss_mb(pid):
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


# --- main -----------------------------------------------------------------------------


def setup():
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "logs").mkdir(parents=True)
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", database="postgres")
    psql(f"CREATE DATABASE {DB}", database="postgres")
    # Only `api migrate` migrates (the processes wait for it).
    subprocess.run([str(BIN / "api"), "migrate"], check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, DATABASE_URL=DATABASE_URL, LOG_LEVEL="warn"))
    ctl("-q", "delete_vhost", VHOST, check=False)
    ctl("-q", "add_vhost", VHOST)
    ctl("-q", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    # The independent consumer's queue, bound before the first event: it keeps every
    # Order.* and Order.Saga.* event until the ledger reads it at the end.
    with pika.BlockingConnection(pika.URLParameters(AMQP_URL)) as connection:
        channel = connection.channel()
        channel.exchange_declare("Orders", "topic", durable=True)
        channel.queue_declare(LEDGER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        for key in ("Order.*", "Order.Saga.*"):
            channel.queue_bind(LEDGER_QUEUE, "Orders", key)


def main():
    rng = random.Random(SEED)
    log(f"seed {SEED}; {ORDERS} orders from {CLIENTS} clients over {SECONDS:.0f} s"
        f"{' (short variant)' if SHORT else ''}")
    setup()
    redis = Redis()
    redis.start()
    gates = proxies()
    for proxy in gates.values():
        try:
            proxy.start()
        except OSError as e:
            for started in gates.values():
                started.stop()
            redis.stop()
            raise SystemExit(f"chaos: {proxy.name} cannot listen on port {proxy.port}: {e}")
    procs = system()
    for proc in procs.values():
        proc.start()
    stop_supervisor = threading.Event()
    supervisor = threading.Thread(target=supervise, args=(procs, stop_supervisor))
    supervisor.start()
    violations, injected = [], collections.Counter()
    started = time.time()
    try:
        wait_http("/readyz")
        prices = seed(rng)
        poison = poison_messages()
        schedule = fault_schedule(rng, procs, redis, poison, gates, prices)
        results = []
        start = time.time()
        threads = clients(prices, results)
        inject(schedule, start, injected)
        for t in threads:
            t.join()
        stream_over.set()
        log(f"{len(results)} orders sent in {time.time() - start:.0f} s; healing and draining")
        # Heal: everything running (the supervisor restarts), the broker up, no partition
        # (each heals itself; the connections frozen for good stay so until the end).
        ctl("-q", "await_startup")
        # The recovery probes first: the orders they place are drained like the others.
        for probe in probes:
            probe.join()
        for kind, wrongs in sorted(unrecovered.items()):
            for wrong in wrongs:
                violations.append(f"{kind}: not recovered within {RECOVERY_SECONDS} s ({wrong})")
        busy = drain(time.time() + DRAIN_SECONDS)
        if any(busy.values()):
            violations.append(f"not drained within {DRAIN_SECONDS} s: {busy}")
        ledger = check_ledger(results + canaries, poison, violations)
        mismatched = check_cache(violations)

        log(f"load: {LOAD_SECONDS} s at saturation, then {LOAD_SECONDS} s while PostgreSQL connections are killed")
        plain = load_phase(False, violations)
        killed = load_phase(True, violations)
        half = half_written_orders(violations)
        rss = {name: peak_rss_mb(p.proc.pid) for name, p in procs.items() if not name.startswith("customer")}
        if rss["api"] > 64:
            violations.append(f"api peak RSS {rss['api']:.1f} MB (bound 64 MB)")
    finally:
        stop_supervisor.set()
        supervisor.join()
        stop_all(procs)
        redis.stop()
        # Last: closes the connections frozen for good.
        for proxy in gates.values():
            proxy.stop()
    crashes = {name: p.crashes for name, p in procs.items() if p.crashes}
    for name, codes in crashes.items():
        if name != "customer-simulator":
            violations.append(f"{name} exited by itself: {codes}")
    check_logs(violations)

    statuses = ", ".join(f"{s or 'no answer'}: {n}" for s, n in sorted(ledger["statuses"].items()))
    summary = [
        f"chaos summary (seed {SEED}{', short' if SHORT else ''}, {time.time() - started:.0f} s)",
        f"  orders: {len(results)} sent by {CLIENTS} clients, {len(canaries)} by the recovery probes ({statuses})",
        "  faults: " + ", ".join(f"{kind} ×{n}" for kind, n in sorted(injected.items())),
        "  restarts: " + ", ".join(f"{n} {p.starts - 1}" for n, p in procs.items() if p.starts > 1),
        f"  events: {ledger['events']} written, all seen by the Order.* consumer: {ledger['events_unseen'] == 0}"
        f" ({ledger['redelivered']} seen more than once)",
        f"  DLQ: {ledger['dlq']} dead letters ({dict(ledger['kinds'])}), {len(poison)} injected,"
        f" {ledger['dlq_duplicates']} duplicates",
        f"  lost {ledger['lost']}, duplicate effects {ledger['duplicate_effects']}, stuck {ledger['stuck']},"
        f" half-written {ledger['half_written'] + half}, cache mismatches {mismatched}",
        f"  load: {plain['rps']:.0f} req/s {plain['statuses']}; with {killed['kills']} connections killed:"
        f" {killed['rps']:.0f} req/s {killed['statuses']} ({killed['interrupted']} requests' transactions"
        f" interrupted, {killed['replaced']} dead connections replaced without a failure),"
        f" then {killed['recovery_503s']} 503s before 20 orders in a row went through",
        "  recovery: " + (", ".join(f"{kind} {', '.join(f'{s:.1f} s' for s in times)}"
                                    for kind, times in sorted(recovery.items())) or "none measured")
        + "".join(f"; {kind}: none within {RECOVERY_SECONDS} s ×{len(wrongs)}"
                  for kind, wrongs in sorted(unrecovered.items())),
        "  silent network: " + ("; ".join(silences) or "no silent fault"),
        "  proxies: " + ", ".join(f"{name} {stats['accepted']} connections, {stats['bytes_up'] / 1e6:.1f} MB up,"
                                  f" {stats['bytes_down'] / 1e6:.1f} MB down, {stats['refused']} refused upstream"
                                  for name, stats in ((name, proxy.stats()) for name, proxy in gates.items())),
        f"  broker: RabbitMQ {broker_version()} on port {AMQP_PORT}",
        "  peak RSS: " + ", ".join(f"{n} {mb:.1f} MB" for n, mb in rss.items()),
        f"  violations: {len(violations)}",
    ]
    print("\n".join(summary))
    for v in violations[:50]:
        print("  -", v)
    sys.exit(1 if violations else 0)


if __name__ == "__main__":
    main()
