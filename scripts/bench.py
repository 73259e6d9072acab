"""`make bench`: every hot path measured next to a baseline taken in the same run.

Builds release binaries, creates a fresh bench database (bench/seed.sql: 1,000 products,
10,000 users, 100,000 orders, five users with 400 orders each), starts api,
outbox-relay, saga-worker and the customer simulator on a RabbitMQ vhost of its own,
runs the scenarios (wrk, pgbench, redis-benchmark, and examples/bench_flow.rs), stops
everything and prints one markdown table, also written to bench/RESULTS.md.

`BENCH_SMOKE=1` (run by `make test`) is the same harness in a few seconds per scenario,
on the debug build, with flows a hundred times smaller and no profile: it checks that
every scenario still runs, and asserts no figure.

The scenarios are registered below (`@scenario`), in the order they run.
`BENCH_ONLY=cache,relay` runs some of them only (`curves` names every curve), and no
bench/RESULTS.md is written then; a name that is not a scenario's is an error.
`python3 scripts/bench.py --list` lists them.
"""

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import harness
from harness import PG, ROOT, psql, run

SMOKE = os.environ.get("BENCH_SMOKE") == "1"
BIN = ROOT / ("target/debug" if SMOKE else "target/release")
DB = "orders_bench"
VHOST = "bench"
API_PORT, RELAY_PORT, WORKER_PORT = 18000, 19101, 19102
API = f"http://127.0.0.1:{API_PORT}"
DURATION = os.environ.get("BENCH_SECONDS", "2" if SMOKE else "10")
HEAVY_USER = "10000000-0000-4000-8000-000000000001"


# --- measuring ------------------------------------------------------------------------


def wrk(path, connections, script=None):
    args = ["wrk", "-t", str(min(connections, 2)), "-c", str(connections), "-d", f"{DURATION}s", "--latency"]
    if script:
        args += ["-s", str(script)]
    out = run(*args, f"{API}{path}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"bench: {errors.group(1)} failed requests on {path}:\n{out}")

    def ms(label):
        value, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rps, "p50": ms("50"), "p99": ms("99")}


def pgbench(clients, *scripts, mode="simple"):
    """Transactions per second of `clients` running the scripts (each transaction picks
    one of them at random, all weighted alike). `mode="prepared"`: each statement is
    planned once per client, as the api's are."""
    files = [arg for script in scripts for arg in ("-f", str(ROOT / "bench" / script))]
    jobs = str(min(clients, 2))
    out = run("pgbench", "-n", "-M", mode, "-c", str(clients), "-j", jobs, "-T", DURATION, *files, f"{PG}/{DB}")
    return float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))


def sql(*statements):
    """psql running each statement (-c) on the bench database; its output."""
    return psql(DB, *(arg for statement in statements for arg in ("-c", statement)))


def scaled(count):
    """A flow's size: a hundredth of it in the smoke run."""
    return str(max(count // 100, 10) if SMOKE else count)


def flow(*args):
    env = dict(os.environ, DATABASE_URL=f"{PG}/{DB}", AMQP_URL=f"amqp://guest:guest@127.0.0.1:5672/{VHOST}")
    return json.loads(run(str(BIN / "examples/bench_flow"), *args, env=env).strip().splitlines()[-1])


class Profile:
    """Where the CPU went while a scenario ran (perf sampling every process on the
    machine, summed by command name) and how many WAL flushes PostgreSQL did: the
    evidence for a target that is missed. Without perf, only the WAL counts. Appends
    itself to `profiles` when the block ends."""

    def __init__(self, label, profiles):
        self.label = label
        self.profiles = profiles
        self.transactions = None  # set by the caller, for WAL flushes per transaction

    def __enter__(self):
        self.wal = self.wal_syncs()
        self.started = time.time()
        self.perf = None
        if shutil.which("perf") and not SMOKE:
            self.data = ROOT / f"target/bench/{re.sub(r'[^a-z0-9]+', '-', self.label.lower())}.perf"
            self.data.parent.mkdir(parents=True, exist_ok=True)
            self.perf = subprocess.Popen(
                ["perf", "record", "-a", "-e", "cpu-clock", "-F", "499", "-o", str(self.data)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        return self

    def __exit__(self, *exc):
        seconds = time.time() - self.started
        self.syncs = self.wal_syncs() - self.wal
        self.split = {}
        if self.perf:
            self.perf.send_signal(signal.SIGINT)
            self.perf.wait()
            report = run("perf", "report", "-i", str(self.data), "--sort", "comm", "--stdio", check=False)
            for share, comm in re.findall(r"^\s+([\d.]+)%\s+(\S.*?)\s*$", report, re.M):
                # Of both cores: 100% here is the whole machine busy.
                self.split[comm] = float(share)
        self.seconds = seconds
        self.profiles.append(self)

    def per_event_us(self, events):
        """CPU microseconds per event by group: PostgreSQL, RabbitMQ (the Erlang VM's
        threads), ours (tokio workers, the bench program) and the rest, idle left out."""
        cores = os.cpu_count()
        groups = collections.Counter()
        for comm, share in self.split.items():
            if comm == "swapper":
                continue
            if comm == "postgres":
                group = "PostgreSQL"
            elif re.search(r"schedu|dirty_|beam|erts|^aux$|inet_", comm):
                group = "RabbitMQ"
            elif comm.startswith(("tokio", "outbox", "bench_flow", "api", "saga", "customer")):
                group = "ours"
            else:
                group = "other"
            groups[group] += share / 100 * self.seconds * cores / events * 1e6
        return groups

    @staticmethod
    def wal_syncs():
        return int(sql("SELECT wal_sync FROM pg_stat_wal").strip())


def settle(limit=240, poll=1.0):
    """Waits for the work a scenario left behind (sagas to answer, events to publish) to
    finish, so the next scenario is not measured against it. Returns how long it took."""
    started = time.time()
    while time.time() < started + limit:
        # pgbench's orders (paid 'Cash') never ask the customer service: not waited for.
        busy = sql(
            "SELECT (SELECT count(*) FROM orders WHERE saga_status = 'Pending' AND payment_method <> 'Cash')"
            " + (SELECT count(*) FROM outbox)"
        ).strip()
        if busy == "0":
            return time.time() - started
        time.sleep(poll)
    print("bench: the system did not settle; measuring anyway", file=sys.stderr)
    return time.time() - started


def relay_batches():
    """The relay's outbox_batch_duration_seconds sum and count so far, from its /metrics
    (none before its first batch)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{RELAY_PORT}/metrics", timeout=5).read().decode()
    found = [re.search(rf"^outbox_batch_duration_seconds_{part} (\S+)", text, re.M) for part in ("sum", "count")]
    return tuple(float(m.group(1)) if m else 0.0 for m in found)


def add_orders(count, user=None):
    """`count` approved orders of 3 lines each: spread over the seeded users, or all of
    them for user number `user` (created, with its address, if it is not seeded)."""
    if user is None:
        who = "1 + n % 10000"
    else:
        who = str(user)
        sql(f"""
            INSERT INTO addresses (id, building_number, street_name, city, country)
            VALUES (('20000000-0000-4000-8000-' || lpad('{user}', 12, '0'))::uuid, 1, 'Street', 'City', 'Country')
            ON CONFLICT DO NOTHING;
            INSERT INTO users (id, username, address_id)
            VALUES (('10000000-0000-4000-8000-' || lpad('{user}', 12, '0'))::uuid, 'user{user}',
                    ('20000000-0000-4000-8000-' || lpad('{user}', 12, '0'))::uuid)
            ON CONFLICT DO NOTHING""")
    sql(
        f"""
        WITH o AS (
            INSERT INTO orders (id, user_id, delivery_address_id, payment_method, order_status, saga_status,
                                total_price, created_at)
            SELECT gen_random_uuid(), ('10000000-0000-4000-8000-' || lpad(({who})::text, 12, '0'))::uuid,
                   ('20000000-0000-4000-8000-' || lpad(({who})::text, 12, '0'))::uuid,
                   'Card', 'New', 'Approved', 30, now() - make_interval(secs => n)
              FROM generate_series(1, {int(count)}) AS n
            RETURNING id)
        INSERT INTO order_products (order_id, position, product_id, name, actual_price)
        SELECT o.id, k, ('00000000-0000-4000-8000-' || lpad((1 + k * 13)::text, 12, '0'))::uuid,
               'Product ' || (1 + k * 13), 10
          FROM o, generate_series(1, 3) AS k""",
        "ANALYZE orders",
        "ANALYZE order_products",
    )
    return f"10000000-0000-4000-8000-{user:012d}" if user is not None else None


def drain(relay, size, profile=None):
    """The relay draining a backlog of `size` rows committed while it was paused, timed
    from the wake-up: the drain alone, without the insert's own time (a producer's work,
    which the raw publishing it is compared with does not do either)."""
    with harness.paused(relay):
        last = flow("backlog", str(size))["last"]
    before = relay_batches()
    with profile or contextlib.nullcontext():
        seconds = flow("drain", str(last))["drain_s"]
    after = relay_batches()
    batch_ms = (after[0] - before[0]) / max(after[1] - before[1], 1) * 1000
    return {"backlog": size, "per_s": size / seconds, "batch_ms": batch_ms}


# --- the table --------------------------------------------------------------------------


@dataclasses.dataclass
class Row:
    """One line of the table: our figure beside its baseline. A numeric target is met by
    a ratio at least as high; a target in words (no ratio) says itself whether it is met."""

    scenario: str
    ours: str
    baseline: str
    ratio: float | None
    target: float | str | None
    met: bool | None = None

    def markdown(self):
        head = f"| {self.scenario} | {self.ours} | {self.baseline}"
        if self.target is None:
            return f"{head} | {self.ratio:.0%} | — | — |"
        if self.ratio is None:
            return f"{head} | — | {self.target} | {'yes' if self.met else 'NO'} |"
        return f"{head} | {self.ratio:.0%} | ≥ {self.target:.0%} | {'yes' if self.ratio >= self.target else 'NO'} |"


@dataclasses.dataclass
class Bench:
    """The running system (its environment, its processes by name) and what the
    scenarios gathered: the table's rows, the profiles, notes and the curves' points."""

    env: dict
    procs: dict
    rows: list[Row] = dataclasses.field(default_factory=list)
    profiles: list[Profile] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    curves: dict[str, list] = dataclasses.field(
        default_factory=lambda: {"relay_backlog": [], "cache_hit": [], "orders": []}
    )

    def row(self, *args, **kwargs):
        self.rows.append(Row(*args, **kwargs))

    def profile(self, label):
        return Profile(label, self.profiles)


# --- the scenarios ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scenario:
    key: str
    about: str
    run: Callable[[Bench], None]
    # BENCH_ONLY may name the group for all of its scenarios.
    group: str | None
    # The system settles first, whether the scenario runs or not: the work an earlier
    # one left is finished before any later one (rss included) is measured.
    settles: bool

    def wanted(self, only):
        return not only or self.key in only or self.group in only


SCENARIOS: dict[str, Scenario] = {}


def scenario(key, about, group=None, settles=True):
    """Registers the function as the scenario `key`; they run in the order registered."""

    def register(run):
        SCENARIOS[key] = Scenario(key, about, run, group, settles)
        return run

    return register


@scenario("post", "POST an order at 1, 16 and 64 connections, against pgbench's same transaction", settles=False)
def post(bench):
    for c in (1, 16, 64):
        settle()
        with bench.profile(f"POST {c} conn: api") as profile:
            ours = wrk("/api/v1/orders/", c, ROOT / "bench/post_order.lua")
        profile.transactions = ours["rps"] * int(DURATION)
        # The sagas still pending when the load stops (at 16 and 64 connections the
        # api takes orders faster than their sagas complete) finish before any
        # baseline runs, or the baseline would share the machine with them.
        drained = settle(poll=0.1)
        with bench.profile(f"POST {c} conn: pgbench") as profile:
            base = pgbench(c, "pgbench_order.sql")
        profile.transactions = base * int(DURATION)
        # The pgbench transaction sends no NOTIFY (nor does ours since #13: the relays
        # are woken after the commit), so it is the disk's limit for this transaction.
        # At one connection the target is the like-for-like row's, below.
        bench.row(
            f"POST /api/v1/orders/ (3 products), {c} conn",
            f"{ours['rps']:.0f} req/s (p50 {ours['p50']:.2f} ms, p99 {ours['p99']:.2f} ms)",
            f"pgbench same transaction, no NOTIFY {base:.0f} tps",
            ours["rps"] / base,
            None if c == 1 else 0.80,
        )
        # Like for like: the api's run also carries each order's saga (the worker's
        # transaction, the relay's moves of two rows) on the same disk. pgbench
        # running the order's transaction and a saga reply's as often (the running
        # relay publishes and moves both rows) is the fair baseline: half its
        # transactions are orders. Ours counts the orders over the load and the time
        # their sagas took to finish after it. The target at one connection (#13);
        # beside the no-NOTIFY target at 16 and 64, what the saga costs there.
        settle()
        with bench.profile(f"POST {c} conn: pgbench order and saga") as profile:
            transactions = pgbench(c, "pgbench_order.sql", "pgbench_saga.sql")
        profile.transactions = transactions * int(DURATION)
        both = transactions / 2
        completed = ours["rps"] * int(DURATION) / (int(DURATION) + drained)
        bench.row(
            "  same, against its like-for-like baseline",
            f"{completed:.0f} orders/s with their sagas ({drained:.1f} s to finish them)",
            f"pgbench the order's and its saga's transactions {both:.0f} orders/s",
            completed / both,
            0.70 if c == 1 else None,
        )
        if c == 1:
            # Diagnostic: the same with the saga's consumers stopped, so that only the
            # api's transaction (and the relay's asynchronous marks) reach the disk.
            settle()
            with harness.paused(bench.procs["saga-worker"], bench.procs["customer-simulator"]):
                with bench.profile("POST 1 conn, saga paused: api") as profile:
                    paused = wrk("/api/v1/orders/", 1, ROOT / "bench/post_order.lua")
                profile.transactions = paused["rps"] * int(DURATION)
            bench.row(
                "  same, saga worker and simulator paused (diagnostic)",
                f"{paused['rps']:.0f} req/s (p50 {paused['p50']:.2f} ms, p99 {paused['p99']:.2f} ms)",
                f"pgbench {base:.0f} tps (above)",
                paused["rps"] / base,
                None,
            )


@scenario("cache", "a user's orders from the cache, 64 conn, against /healthcheck/ and redis-benchmark")
def cache(bench):
    page = f"/api/v1/orders/user/{HEAVY_USER}?limit=20"
    body = urllib.request.urlopen(f"{API}{page}").read()  # fills the cache
    with bench.profile("GET user's orders, cache hit, 64 conn"):
        cached = wrk(page, 64)
    with bench.profile("/healthcheck/, 64 conn"):
        health = wrk("/healthcheck/", 64)
    redis = run("redis-benchmark", "-q", "-n", "200000", "-c", "64", "-d", str(len(body)), "-t", "get")
    redis_rps = float(re.search(r"GET: ([\d.]+) requests per second", redis).group(1))
    bench.row(
        f"GET user's orders, cache hit, 20 orders ({len(body)} B), 64 conn",
        f"{cached['rps']:.0f} req/s (p99 {cached['p99']:.2f} ms)",
        f"/healthcheck/ {health['rps']:.0f} req/s; redis-benchmark GET {redis_rps:.0f}/s",
        cached["rps"] / health["rps"],
        0.50,
    )
    bench.row("  same, p99 latency", f"{cached['p99']:.2f} ms", "—", None, "< 5 ms", cached["p99"] < 5.0)


@scenario("list", "the order list (SQL), 16 conn, against pgbench's same SELECT, planned each time and once")
def order_list(bench):
    with bench.profile("GET list, 16 conn: api"):
        listed = wrk("/api/v1/orders/?limit=20", 16)
    with bench.profile("GET list, 16 conn: pgbench"):
        base = pgbench(16, "pgbench_list.sql")
    bench.row(
        "GET /api/v1/orders/?limit=20 (SQL), 16 conn",
        f"{listed['rps']:.0f} req/s (p99 {listed['p99']:.2f} ms)",
        f"pgbench same SELECT {base:.0f} tps",
        listed["rps"] / base,
        0.70,
    )
    # The api plans its statements once per session (http::SESSION_SETTINGS); the
    # baseline above plans the SELECT at every run. The same, planned once: what
    # PostgreSQL alone does with the api's statement.
    with bench.profile("GET list, 16 conn: pgbench prepared"):
        prepared = pgbench(16, "pgbench_list.sql", mode="prepared")
    bench.row(
        "  same, against the SELECT planned once",
        f"{listed['rps']:.0f} req/s",
        f"pgbench -M prepared {prepared:.0f} tps",
        listed["rps"] / prepared,
        None,
    )


@scenario("relay", "the relay draining a 20,000-row backlog against raw publishing; its latency; retention")
def relay(bench):
    with bench.profile("relay: raw publish") as raw_profile:
        raw = flow("raw-publish", scaled(20000))["raw_publish_per_s"]
    relay_profile = bench.profile("relay: 20,000-row backlog")
    relayed = {"relay_per_s": drain(bench.procs["outbox-relay"], int(scaled(20000)), relay_profile)["per_s"]}
    if relay_profile.split:
        # What the machine can do at most: its cores over the CPU one relayed event
        # costs, all processes together.
        costs = relay_profile.per_event_us(int(scaled(20000)))
        ceiling = os.cpu_count() * 1e6 / sum(costs.values())
        raw_costs = raw_profile.per_event_us(int(scaled(20000)))
        bench.notes.append(
            "Relay, CPU per event (perf): "
            + ", ".join(f"{g} {us:.0f} µs" for g, us in costs.most_common())
            + f"; raw publishing costs RabbitMQ {raw_costs['RabbitMQ']:.0f} µs a message. With "
            f"{os.cpu_count()} cores the relay can do at most {ceiling:.0f} events/s; it did "
            f"{relayed['relay_per_s']:.0f}/s ({relayed['relay_per_s'] / ceiling:.0%} of that ceiling)."
        )
    relayed.update(flow("relay-latency"))
    bench.row(
        "relay: events/s (20,000-row backlog)",
        f"{relayed['relay_per_s']:.0f}/s",
        f"raw publish with confirms {raw:.0f}/s",
        relayed["relay_per_s"] / raw,
        0.70,
    )
    p50, p99 = relayed["commit_to_publish_p50_ms"], relayed["commit_to_publish_p99_ms"]
    bench.row("  relay: commit → publish p50 / p99", f"{p50:.1f} / {p99:.1f} ms", "—", None, "p50 < 20 ms", p50 < 20)
    # Retention must outrun publishing, or a busy outbox grows without bound.
    kept = flow("retention", scaled(200000))
    bench.row(
        "  relay: retention, rows deleted/s (200,000 due)",
        f"{kept['retention_per_s']:.0f}/s",
        f"relay publishes {relayed['relay_per_s']:.0f}/s",
        None,
        "≥ 2,000/s",
        kept["retention_per_s"] >= 2000,
    )


@scenario("saga", "saga replies applied per second, against pgbench's same transaction")
def saga(bench):
    applied = flow("saga", scaled(5000))["saga_per_s"]
    base = pgbench(1, "pgbench_saga.sql")
    bench.row(
        "saga-worker: replies applied/s",
        f"{applied:.0f}/s",
        f"pgbench same transaction, 1 client {base:.0f} tps",
        applied / base,
        0.50,
    )


@scenario("e2e", "end to end: POST until the order shows Approved in the user's list")
def end_to_end(bench):
    e2e = flow("e2e", scaled(200), API)
    bench.row(
        "end to end: POST → Approved in the user's list",
        f"p50 {e2e['e2e_p50_ms']:.1f} ms, p99 {e2e['e2e_p99_ms']:.1f} ms",
        "—",
        None,
        "p50 < 100 ms",
        e2e["e2e_p50_ms"] < 100,
    )


# How cost grows with the work (#13): rows for the table, points for the charts.


@scenario("relay-curve", "curve: the relay at 10,000, 100,000 and 1,000,000-row backlogs", group="curves")
def relay_curve(bench):
    points = bench.curves["relay_backlog"]
    for backlog in (10_000, 100_000, 1_000_000):
        points.append(drain(bench.procs["outbox-relay"], int(scaled(backlog))))
    first = points[0]
    for p in points:
        bench.row(
            f"curve: relay, {p['backlog']:,}-row backlog",
            f"{p['per_s']:.0f}/s, mean batch {p['batch_ms']:.1f} ms",
            f"{first['backlog']:,} rows: {first['per_s']:.0f}/s",
            p["per_s"] / first["per_s"],
            None,
        )


@scenario("contention", "curve: two relays and two workers against one", group="curves", settles=False)
def contention(bench):
    # Two processes of each background kind against one: no collapse under contention.
    for kind, port, name, size, key in [
        ("outbox-relay", RELAY_PORT + 2, "relay", 20000, "relay_per_s"),
        ("saga-worker", WORKER_PORT + 2, "saga", 5000, "saga_per_s"),
    ]:
        settle()
        one = flow(name, scaled(size))[key]
        extra = harness.spawn([str(BIN / kind)], dict(bench.env, METRICS_ADDR=f"127.0.0.1:{port}"))
        try:
            harness.wait_http(f"http://127.0.0.1:{port}/readyz", "bench")
            settle()
            two = flow(name, scaled(size))[key]
        finally:
            harness.stop_all([extra], 30)
        bench.row(
            f"curve: 2 {kind}s against 1, {name} per second", f"{two:.0f}/s", f"1 {kind}: {one:.0f}/s", two / one, 0.80
        )


@scenario("cache-curve", "curve: a cached page for users with 20, 200 and 2,000 orders", group="curves")
def cache_curve(bench):
    points = bench.curves["cache_hit"]
    for number, count in ((10001, 20), (10002, 200), (10003, 2000)):
        user = add_orders(count, user=number)
        page = f"/api/v1/orders/user/{user}?limit=20"
        urllib.request.urlopen(f"{API}{page}").read()  # fills the cache
        hit = wrk(page, 64)
        points.append({"orders": count, "rps": hit["rps"], "p99": hit["p99"]})
    first = points[0]
    for p in points:
        bench.row(
            f"curve: cache hit, a user with {p['orders']:,} orders (page of 20), 64 conn",
            f"{p['rps']:.0f} req/s (p99 {p['p99']:.2f} ms)",
            f"20 orders: {first['rps']:.0f} req/s",
            p["rps"] / first["rps"],
            None,
        )


@scenario(
    "orders-curve", "curve: POST and the order list with 100,000 and 1,000,000 orders", group="curves", settles=False
)
def orders_curve(bench):
    points = bench.curves["orders"]
    for added in (0, int(scaled(900_000))):
        if added:
            add_orders(added)
        settle()
        total = int(sql("SELECT count(*) FROM orders").strip())
        post = wrk("/api/v1/orders/", 16, ROOT / "bench/post_order.lua")
        head = wrk("/api/v1/orders/?limit=20", 16)
        deep = wrk("/api/v1/orders/?limit=20&offset=9980", 16)
        points.append(
            {
                "orders": total,
                "post_rps": post["rps"],
                "post_p50": post["p50"],
                "post_p99": post["p99"],
                "first_rps": head["rps"],
                "first_p99": head["p99"],
                "deep_rps": deep["rps"],
                "deep_p99": deep["p99"],
            }
        )
    first = points[0]
    for p in points:
        bench.row(
            f"curve: POST /api/v1/orders/, {p['orders']:,} orders, 16 conn",
            f"{p['post_rps']:.0f} req/s (p50 {p['post_p50']:.2f} ms, p99 {p['post_p99']:.2f} ms)",
            f"{first['orders']:,} orders: {first['post_rps']:.0f} req/s",
            p["post_rps"] / first["post_rps"],
            None,
        )
        bench.row(
            f"curve: GET /api/v1/orders/?limit=20, first page / offset 9980, {p['orders']:,} orders",
            f"{p['first_rps']:.0f} / {p['deep_rps']:.0f} req/s (p99 {p['first_p99']:.2f} / {p['deep_p99']:.2f} ms)",
            f"{first['orders']:,} orders: {first['first_rps']:.0f} / {first['deep_rps']:.0f} req/s",
            p["deep_rps"] / first["deep_rps"],
            None,
        )


@scenario("rss", "peak RSS of api, outbox-relay and saga-worker under the load so far", settles=False)
def peak_rss(bench):
    for name, limit in [("api", 64), ("outbox-relay", 32), ("saga-worker", 32)]:
        rss = harness.peak_rss_mb(bench.procs[name].pid)
        bench.row(f"peak RSS under load: {name}", f"{rss:.1f} MB", "—", None, f"≤ {limit} MB", rss <= limit)


def groups():
    """Each group BENCH_ONLY may name: its scenarios' keys."""
    found = collections.defaultdict(list)
    for s in SCENARIOS.values():
        if s.group:
            found[s.group].append(s.key)
    return found


def selected(only):
    """The scenarios BENCH_ONLY's names select (all of them without any); exits on a name
    that is neither a scenario's nor a group's."""
    unknown = sorted(only - set(SCENARIOS) - set(groups()))
    if unknown:
        known = ", ".join([*SCENARIOS, *groups()])
        sys.exit(f"bench: BENCH_ONLY names no scenario {', '.join(unknown)}; known: {known} (see --list)")
    return [s for s in SCENARIOS.values() if s.wanted(only)]


def print_list():
    width = max(map(len, [*SCENARIOS, *groups()])) + 2
    for s in SCENARIOS.values():
        print(f"{s.key:<{width}}{s.about}")
    for group, keys in groups().items():
        print(f"{group:<{width}}all of {', '.join(keys)}")


# --- the run ----------------------------------------------------------------------------


def prepare():
    """The services up, wrk installed, the binaries built."""
    subprocess.run([str(ROOT / "scripts/services.sh")], check=True)
    if not shutil.which("wrk"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            sys.exit("bench: wrk is missing; install Debian's wrk package")
        noninteractive = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, env=noninteractive)
    profile = [] if SMOKE else ["--release"]
    subprocess.run(["cargo", "build", *profile, "--workspace", "--bins", "--examples"], check=True, cwd=ROOT)


def start():
    """The bench database seeded, the vhost and Redis's database 1 fresh, and the system
    started on them."""
    print("bench: seeding", DB, file=sys.stderr)
    env = dict(os.environ, DATABASE_URL=f"{PG}/{DB}", LOG_LEVEL="warn", LOG_FORMAT="json")
    harness.create_database(DB, BIN / "api", env)
    psql(DB, "-f", str(ROOT / "bench/seed.sql"))
    harness.create_vhost(VHOST)
    run("redis-cli", "-n", "1", "flushdb")

    env.update(
        AMQP_URL=f"amqp://guest:guest@127.0.0.1:5672/{VHOST}",
        REDIS_URL="redis://127.0.0.1:6379/1",
        CREDIT_LIMIT="1000000",
    )
    batch_size = os.environ.get("RELAY_BATCH_SIZE", "500")
    own = {
        "api": {"API_ADDR": f"127.0.0.1:{API_PORT}", "DB_MAX_CONNECTIONS": "16"},
        "outbox-relay": {"METRICS_ADDR": f"127.0.0.1:{RELAY_PORT}", "RELAY_BATCH_SIZE": batch_size},
        "saga-worker": {"METRICS_ADDR": f"127.0.0.1:{WORKER_PORT}"},
        "customer-simulator": {},
    }
    procs = {name: harness.spawn([str(BIN / name)], dict(env, **extra)) for name, extra in own.items()}
    return Bench(env, procs)


def measure(bench, wanted):
    """Every scenario wanted, in order, once the system is ready."""
    harness.wait_http(f"{API}/healthcheck/", "bench")
    harness.wait_http(f"http://127.0.0.1:{RELAY_PORT}/readyz", "bench")
    harness.wait_http(f"http://127.0.0.1:{WORKER_PORT}/readyz", "bench")
    for s in SCENARIOS.values():
        if s.settles:
            settle()
        if s in wanted:
            s.run(bench)


def stop(bench):
    harness.stop_all(bench.procs.values(), 10)
    harness.delete_vhost(VHOST)


def draw_charts(curves, out):
    """The curves as PNG charts (scripts/bench_charts.py, matplotlib from scripts/tools.sh)."""
    data = ROOT / "target/bench/curves.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps(curves, indent=1))
    python = ROOT / "target/tools/charts/bin/python"
    if not python.exists():
        subprocess.run([str(ROOT / "scripts/tools.sh")], check=True)
    subprocess.run([str(python), str(ROOT / "scripts/bench_charts.py"), str(data), str(out)], check=True)


def report(bench, only, wanted):
    """The table printed (and written to bench/RESULTS.md by a full run), the curves drawn."""
    lines = ["| scenario | ours | baseline (same run) | ratio | target | met |", "|---|---|---|---|---|---|"]
    lines += [row.markdown() for row in bench.rows]
    cores = os.cpu_count()
    memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 1024 / 1024
    header = (
        f"Measured {datetime.date.today().isoformat()} on this machine: {cores} cores, {memory:.0f} GiB, "
        f"PostgreSQL, Redis and RabbitMQ local; {DURATION} s per load; release build."
    )
    table = "\n".join(lines)
    if bench.profiles and not SMOKE:
        table += (
            "\n\n## Where the time went (perf, every process on the machine by command; 100% = both cores)\n\n"
            "| scenario | seconds | WAL flushes | per transaction | CPU by command |\n|---|---|---|---|---|\n"
        )
        for p in bench.profiles:
            by_share = sorted(p.split.items(), key=lambda kv: -kv[1])
            busy = ", ".join(f"{comm} {share:.0f}%" for comm, share in by_share if share >= 1.0)
            per = f"{p.syncs / p.transactions:.2f}" if p.transactions else "—"
            table += f"| {p.label} | {p.seconds:.1f} | {p.syncs} | {per} | {busy or 'perf not available'} |\n"
        table += "".join(f"\n{note}\n" for note in bench.notes)
    if any(s.group == "curves" for s in wanted):
        # A full run draws into bench/ (linked from the README); the others into target/.
        draw_charts(bench.curves, ROOT / ("target/bench" if SMOKE or only else "bench"))
    if SMOKE:
        header = (
            f"Smoke run ({DURATION} s per load, debug build, flows a hundredth of the size): no figure means anything."
        )
    elif not only:
        (ROOT / "bench/RESULTS.md").write_text(f"# Benchmark results\n\n{header}\n\n{table}\n")
    print(header)
    print()
    print(table)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the scenarios BENCH_ONLY may name, and exit")
    if parser.parse_args().list:
        print_list()
        return
    only = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
    wanted = selected(only)
    prepare()
    bench = start()
    try:
        measure(bench, wanted)
    finally:
        stop(bench)
    report(bench, only, wanted)


if __name__ == "__main__":
    main()
