"""`make bench`: every hot path measured next to a baseline taken in the same run.

Builds release binaries, creates a fresh bench database (bench/seed.sql: 1,000 products,
10,000 users, 100,000 orders, five users with 400 orders each), starts api,
outbox-relay, saga-worker and the customer simulator on a RabbitMQ vhost of its own,
runs the scenarios (wrk, pgbench, redis-benchmark, and examples/bench_flow.rs), stops
everything and prints one markdown table, also written to bench/RESULTS.md.

`BENCH_SMOKE=1` (run by `make test`) is the same harness in a few seconds per scenario,
on the debug build, with flows a hundred times smaller and no profile: it checks that
every scenario still runs, and asserts no figure.
"""

import collections
import contextlib
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE = os.environ.get("BENCH_SMOKE") == "1"
BIN = ROOT / ("target/debug" if SMOKE else "target/release")
DB = "orders_bench"
PG = "postgres://postgres@127.0.0.1:5432"
VHOST = "bench"
API_PORT, RELAY_PORT, WORKER_PORT = 18000, 19101, 19102
API = f"http://127.0.0.1:{API_PORT}"
DURATION = os.environ.get("BENCH_SECONDS", "2" if SMOKE else "10")
HEAVY_USER = "10000000-0000-4000-8000-000000000001"
# BENCH_ONLY=cache,relay runs some scenarios only (post, cache, list, relay, saga, e2e, curves, rss);
# of the curves, one alone: relay-curve, contention, cache-curve, orders-curve.
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))


def want(name):
    return not ONLY or name in ONLY


def want_curve(name):
    return want("curves") or name in ONLY


def run(*args, **kwargs):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs).stdout


def psql(database, *args):
    return run("psql", f"{PG}/{database}", "-v", "ON_ERROR_STOP=1", "-qAt", *args)


def wait_for(url, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    sys.exit(f"bench: {url} did not come up")


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
    out = run("pgbench", "-n", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2)), "-T", DURATION,
              *files, f"{PG}/{DB}")
    return float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))


def scaled(count):
    """A flow's size: a hundredth of it in the smoke run."""
    return str(max(count // 100, 10) if SMOKE else count)


def flow(*args):
    env = dict(os.environ, DATABASE_URL=f"{PG}/{DB}", AMQP_URL=f"amqp://guest:guest@127.0.0.1:5672/{VHOST}")
    return json.loads(run(str(BIN / "examples/bench_flow"), *args, env=env).strip().splitlines()[-1])


class Profile:
    """Where the CPU went while a scenario ran (perf sampling every process on the
    machine, summed by command name) and how many WAL flushes PostgreSQL did: the
    evidence for a target that is missed. Without perf, only the WAL counts."""

    def __init__(self, label):
        self.label = label
        self.transactions = None  # set by the caller, for WAL flushes per transaction

    def __enter__(self):
        self.wal = self.wal_syncs()
        self.started = time.time()
        self.perf = None
        if shutil.which("perf") and not SMOKE:
            self.data = ROOT / f"target/bench/{re.sub(r'[^a-z0-9]+', '-', self.label.lower())}.perf"
            self.data.parent.mkdir(parents=True, exist_ok=True)
            self.perf = subprocess.Popen(["perf", "record", "-a", "-e", "cpu-clock", "-F", "499", "-o", str(self.data)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        seconds = time.time() - self.started
        self.syncs = self.wal_syncs() - self.wal
        self.split = {}
        if self.perf:
            self.perf.send_signal(signal.SIGINT)
            self.perf.wait()
            report = subprocess.run(["perf", "report", "-i", str(self.data), "--sort", "comm", "--stdio"],
                                    capture_output=True, text=True).stdout
            for share, comm in re.findall(r"^\s+([\d.]+)%\s+(\S.*?)\s*$", report, re.M):
                # Of both cores: 100% here is the whole machine busy.
                self.split[comm] = float(share)
        self.seconds = seconds
        PROFILES.append(self)

    def per_event_us(self, events):
        """CPU microseconds per event by group: PostgreSQL, RabbitMQ (the Erlang VM's
        threads), ours (tokio workers, the bench program) and the rest, idle left out."""
        cores = os.cpu_count()
        groups = collections.Counter()
        for comm, share in self.split.items():
            if comm == "swapper":
                continue
            group = ("PostgreSQL" if comm == "postgres" else
                     "RabbitMQ" if re.search(r"schedu|dirty_|beam|erts|^aux$|inet_", comm) else
                     "ours" if comm.startswith(("tokio", "outbox", "bench_flow", "api", "saga", "customer")) else "other")
            groups[group] += share / 100 * self.seconds * cores / events * 1e6
        return groups

    @staticmethod
    def wal_syncs():
        return int(psql(DB, "-c", "SELECT wal_sync FROM pg_stat_wal").strip())


PROFILES = []
NOTES = []
CURVES = {}


def settle(limit=240, poll=1.0):
    """Waits for the work a scenario left behind (sagas to answer, events to publish) to
    finish, so the next scenario is not measured against it. Returns how long it took."""
    started = time.time()
    while time.time() < started + limit:
        # pgbench's orders (paid 'Cash') never ask the customer service: not waited for.
        busy = psql(DB, "-c", "SELECT (SELECT count(*) FROM orders WHERE saga_status = 'Pending' AND payment_method <> 'Cash')"
                              " + (SELECT count(*) FROM outbox)").strip()
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
        psql(DB, "-c", f"""
            INSERT INTO addresses (id, building_number, street_name, city, country)
            VALUES (('20000000-0000-4000-8000-' || lpad('{user}', 12, '0'))::uuid, 1, 'Street', 'City', 'Country')
            ON CONFLICT DO NOTHING;
            INSERT INTO users (id, username, address_id)
            VALUES (('10000000-0000-4000-8000-' || lpad('{user}', 12, '0'))::uuid, 'user{user}',
                    ('20000000-0000-4000-8000-' || lpad('{user}', 12, '0'))::uuid)
            ON CONFLICT DO NOTHING""")
    psql(DB, "-c", f"""
        WITH o AS (
            INSERT INTO orders (id, user_id, delivery_address_id, payment_method, order_status, saga_status,
                                total_price, created_at)
            SELECT gen_random_uuid(), ('10000000-0000-4000-8000-' || lpad(({who})::text, 12, '0'))::uuid,
                   ('20000000-0000-4000-8000-' || lpad(({who})::text, 12, '0'))::uuid,
                   'Card', 'New', 'Approved', 30, now() - make_interval(secs => n)
              FROM generate_series(1, {int(count)}) AS n
            RETURNING id)
        INSERT INTO order_products (order_id, position, product_id, name, actual_price)
        SELECT o.id, k, ('00000000-0000-4000-8000-' || lpad((1 + k * 13)::text, 12, '0'))::uuid, 'Product ' || (1 + k * 13), 10
          FROM o, generate_series(1, 3) AS k""", "-c", "ANALYZE orders", "-c", "ANALYZE order_products")
    return f"10000000-0000-4000-8000-{user:012d}" if user is not None else None


def peak_rss_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def drain(relay, size, profile=None):
    """The relay draining a backlog of `size` rows committed while it was paused, timed
    from the wake-up: the drain alone, without the insert's own time (a producer's work,
    which the raw publishing it is compared with does not do either)."""
    relay.send_signal(signal.SIGSTOP)
    try:
        last = flow("backlog", str(size))["last"]
    finally:
        relay.send_signal(signal.SIGCONT)
    before = relay_batches()
    with profile or contextlib.nullcontext():
        seconds = flow("drain", str(last))["drain_s"]
    after = relay_batches()
    batch_ms = (after[0] - before[0]) / max(after[1] - before[1], 1) * 1000
    return {"backlog": size, "per_s": size / seconds, "batch_ms": batch_ms}


def curves(env, rows, procs):
    """How cost grows with the work (#13): the relay at three backlogs, two relays and two
    workers against one, a cached page for users with 20, 200 and 2,000 orders, and POST
    and the order list with 100,000 and 1,000,000 orders. Rows for the table; the points
    for the charts."""
    points = {"relay_backlog": [], "cache_hit": [], "orders": []}
    for backlog in (10_000, 100_000, 1_000_000) if want_curve("relay-curve") else ():
        size = int(scaled(backlog))
        points["relay_backlog"].append(drain(procs["outbox-relay"], size))
    for p in points["relay_backlog"]:
        first = points["relay_backlog"][0]
        rows.append((f"curve: relay, {p['backlog']:,}-row backlog", f"{p['per_s']:.0f}/s, mean batch {p['batch_ms']:.1f} ms",
                     f"{first['backlog']:,} rows: {first['per_s']:.0f}/s", p["per_s"] / first["per_s"], None))

    # Two processes of each background kind against one: no collapse under contention.
    for kind, port, scenario, size, key in [("outbox-relay", RELAY_PORT + 2, "relay", 20000, "relay_per_s"),
                                            ("saga-worker", WORKER_PORT + 2, "saga", 5000, "saga_per_s")
                                            ] if want_curve("contention") else ():
        settle()
        one = flow(scenario, scaled(size))[key]
        extra = subprocess.Popen([str(BIN / kind)], env=dict(env, METRICS_ADDR=f"127.0.0.1:{port}"), stdout=subprocess.DEVNULL)
        try:
            wait_for(f"http://127.0.0.1:{port}/readyz")
            settle()
            two = flow(scenario, scaled(size))[key]
        finally:
            extra.send_signal(signal.SIGTERM)
            extra.wait(timeout=30)
        rows.append((f"curve: 2 {kind}s against 1, {scenario} per second", f"{two:.0f}/s", f"1 {kind}: {one:.0f}/s", two / one, 0.80))

    settle()
    for number, count in ((10001, 20), (10002, 200), (10003, 2000)) if want_curve("cache-curve") else ():
        user = add_orders(count, user=number)
        page = f"/api/v1/orders/user/{user}?limit=20"
        urllib.request.urlopen(f"{API}{page}").read()  # fills the cache
        hit = wrk(page, 64)
        points["cache_hit"].append({"orders": count, "rps": hit["rps"], "p99": hit["p99"]})
    for p in points["cache_hit"]:
        first = points["cache_hit"][0]
        rows.append((f"curve: cache hit, a user with {p['orders']:,} orders (page of 20), 64 conn",
                     f"{p['rps']:.0f} req/s (p99 {p['p99']:.2f} ms)", f"20 orders: {first['rps']:.0f} req/s", p["rps"] / first["rps"], None))

    for added in (0, int(scaled(900_000))) if want_curve("orders-curve") else ():
        if added:
            add_orders(added)
        settle()
        total = int(psql(DB, "-c", "SELECT count(*) FROM orders").strip())
        post = wrk("/api/v1/orders/", 16, ROOT / "bench/post_order.lua")
        head = wrk("/api/v1/orders/?limit=20", 16)
        deep = wrk("/api/v1/orders/?limit=20&offset=9980", 16)
        points["orders"].append({"orders": total, "post_rps": post["rps"], "post_p50": post["p50"], "post_p99": post["p99"],
                                 "first_rps": head["rps"], "first_p99": head["p99"], "deep_rps": deep["rps"], "deep_p99": deep["p99"]})
    for p in points["orders"]:
        first = points["orders"][0]
        rows.append((f"curve: POST /api/v1/orders/, {p['orders']:,} orders, 16 conn",
                     f"{p['post_rps']:.0f} req/s (p50 {p['post_p50']:.2f} ms, p99 {p['post_p99']:.2f} ms)",
                     f"{first['orders']:,} orders: {first['post_rps']:.0f} req/s", p["post_rps"] / first["post_rps"], None))
        rows.append((f"curve: GET /api/v1/orders/?limit=20, first page / offset 9980, {p['orders']:,} orders",
                     f"{p['first_rps']:.0f} / {p['deep_rps']:.0f} req/s (p99 {p['first_p99']:.2f} / {p['deep_p99']:.2f} ms)",
                     f"{first['orders']:,} orders: {first['first_rps']:.0f} / {first['deep_rps']:.0f} req/s",
                     p["deep_rps"] / first["deep_rps"], None))
    return points


def draw_charts(out):
    """The curves as PNG charts (scripts/bench_charts.py, matplotlib from scripts/tools.sh)."""
    data = ROOT / "target/bench/curves.json"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps(CURVES, indent=1))
    python = ROOT / "target/tools/charts/bin/python"
    if not python.exists():
        subprocess.run([str(ROOT / "scripts/tools.sh")], check=True)
    subprocess.run([str(python), str(ROOT / "scripts/bench_charts.py"), str(data), str(out)], check=True)


def main():
    subprocess.run([str(ROOT / "scripts/services.sh")], check=True)
    if not shutil.which("wrk"):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            sys.exit("bench: wrk is missing; install Debian's wrk package")
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    profile = [] if SMOKE else ["--release"]
    subprocess.run(["cargo", "build", *profile, "--workspace", "--bins", "--examples"], check=True, cwd=ROOT)

    print("bench: seeding", DB, file=sys.stderr)
    psql("postgres", "-c", f"DROP DATABASE IF EXISTS {DB}", "-c", f"CREATE DATABASE {DB}")
    env = dict(os.environ, DATABASE_URL=f"{PG}/{DB}", LOG_LEVEL="warn", LOG_FORMAT="json")
    subprocess.run([str(BIN / "api"), "migrate"], check=True, env=env, stdout=subprocess.DEVNULL)
    psql(DB, "-f", str(ROOT / "bench/seed.sql"))
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", VHOST], capture_output=True)
    run("rabbitmqctl", "-q", "add_vhost", VHOST)
    run("rabbitmqctl", "-q", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    run("redis-cli", "-n", "1", "flushdb")

    env.update(AMQP_URL=f"amqp://guest:guest@127.0.0.1:5672/{VHOST}", REDIS_URL="redis://127.0.0.1:6379/1",
               CREDIT_LIMIT="1000000")
    procs = {}
    for name, extra in [("api", {"API_ADDR": f"127.0.0.1:{API_PORT}", "DB_MAX_CONNECTIONS": "16"}),
                        ("outbox-relay", {"METRICS_ADDR": f"127.0.0.1:{RELAY_PORT}", "RELAY_BATCH_SIZE": os.environ.get("RELAY_BATCH_SIZE", "500")}),
                        ("saga-worker", {"METRICS_ADDR": f"127.0.0.1:{WORKER_PORT}"}),
                        ("customer-simulator", {})]:
        procs[name] = subprocess.Popen([str(BIN / name)], env=dict(env, **extra), stdout=subprocess.DEVNULL)
    rows = []
    try:
        wait_for(f"{API}/healthcheck/")
        wait_for(f"http://127.0.0.1:{RELAY_PORT}/readyz")
        wait_for(f"http://127.0.0.1:{WORKER_PORT}/readyz")

        for c in (1, 16, 64) if want("post") else ():
            settle()
            with Profile(f"POST {c} conn: api") as profile:
                ours = wrk("/api/v1/orders/", c, ROOT / "bench/post_order.lua")
            profile.transactions = ours["rps"] * int(DURATION)
            # The sagas still pending when the load stops (at 16 and 64 connections the
            # api takes orders faster than their sagas complete) finish before any
            # baseline runs, or the baseline would share the machine with them.
            drained = settle(poll=0.1)
            with Profile(f"POST {c} conn: pgbench") as profile:
                base = pgbench(c, "pgbench_order.sql")
            profile.transactions = base * int(DURATION)
            # The pgbench transaction sends no NOTIFY (nor does ours since #13: the relays
            # are woken after the commit), so it is the disk's limit for this transaction.
            rows.append((f"POST /api/v1/orders/ (3 products), {c} conn", f"{ours['rps']:.0f} req/s (p50 {ours['p50']:.2f} ms, p99 {ours['p99']:.2f} ms)",
                         f"pgbench same transaction, no NOTIFY {base:.0f} tps", ours["rps"] / base, 0.70 if c == 1 else 0.80))
            # Like for like: the api's run also carries each order's saga (the worker's
            # transaction, the relay's moves of two rows) on the same disk. pgbench
            # running the order's transaction and a saga reply's as often (the running
            # relay publishes and moves both rows) is the fair baseline: half its
            # transactions are orders. Ours counts the orders over the load and the time
            # their sagas took to finish after it. The target at one connection (#13);
            # beside the no-NOTIFY target at 16 and 64, what the saga costs there.
            settle()
            with Profile(f"POST {c} conn: pgbench order and saga") as profile:
                transactions = pgbench(c, "pgbench_order.sql", "pgbench_saga.sql")
            profile.transactions = transactions * int(DURATION)
            both = transactions / 2
            completed = ours["rps"] * int(DURATION) / (int(DURATION) + drained)
            if c == 1:
                rows[-1] = rows[-1][:3] + (ours["rps"] / base, None)
            rows.append(("  same, against its like-for-like baseline",
                         f"{completed:.0f} orders/s with their sagas ({drained:.1f} s to finish them)",
                         f"pgbench the order's and its saga's transactions {both:.0f} orders/s", completed / both,
                         0.70 if c == 1 else None))
            if c == 1:
                # Diagnostic: the same with the saga's consumers stopped, so that only the
                # api's transaction (and the relay's asynchronous marks) reach the disk.
                settle()
                saga = [procs["saga-worker"], procs["customer-simulator"]]
                for proc in saga:
                    proc.send_signal(signal.SIGSTOP)
                try:
                    with Profile("POST 1 conn, saga paused: api") as profile:
                        paused = wrk("/api/v1/orders/", 1, ROOT / "bench/post_order.lua")
                    profile.transactions = paused["rps"] * int(DURATION)
                finally:
                    for proc in saga:
                        proc.send_signal(signal.SIGCONT)
                rows.append(("  same, saga worker and simulator paused (diagnostic)",
                             f"{paused['rps']:.0f} req/s (p50 {paused['p50']:.2f} ms, p99 {paused['p99']:.2f} ms)",
                             f"pgbench {base:.0f} tps (above)", paused["rps"] / base, None))

        page = f"/api/v1/orders/user/{HEAVY_USER}?limit=20"
        settle()
        if want("cache"):
            body = urllib.request.urlopen(f"{API}{page}").read()  # fills the cache
            with Profile("GET user's orders, cache hit, 64 conn"):
                cached = wrk(page, 64)
            with Profile("/healthcheck/, 64 conn"):
                health = wrk("/healthcheck/", 64)
            redis = run("redis-benchmark", "-q", "-n", "200000", "-c", "64", "-d", str(len(body)), "-t", "get")
            redis_rps = float(re.search(r"GET: ([\d.]+) requests per second", redis).group(1))
            rows.append((f"GET user's orders, cache hit, 20 orders ({len(body)} B), 64 conn",
                         f"{cached['rps']:.0f} req/s (p99 {cached['p99']:.2f} ms)",
                         f"/healthcheck/ {health['rps']:.0f} req/s; redis-benchmark GET {redis_rps:.0f}/s",
                         cached["rps"] / health["rps"], 0.50))
            rows.append(("  same, p99 latency", f"{cached['p99']:.2f} ms", "—", None, "< 5 ms", cached["p99"] < 5.0))

        settle()
        if want("list"):
            with Profile("GET list, 16 conn: api"):
                listed = wrk("/api/v1/orders/?limit=20", 16)
            with Profile("GET list, 16 conn: pgbench"):
                base = pgbench(16, "pgbench_list.sql")
            rows.append(("GET /api/v1/orders/?limit=20 (SQL), 16 conn", f"{listed['rps']:.0f} req/s (p99 {listed['p99']:.2f} ms)",
                     f"pgbench same SELECT {base:.0f} tps", listed["rps"] / base, 0.70))
            # The api plans its statements once per session (http::SESSION_SETTINGS); the
            # baseline above plans the SELECT at every run. The same, planned once: what
            # PostgreSQL alone does with the api's statement.
            with Profile("GET list, 16 conn: pgbench prepared"):
                prepared = pgbench(16, "pgbench_list.sql", mode="prepared")
            rows.append(("  same, against the SELECT planned once", f"{listed['rps']:.0f} req/s",
                         f"pgbench -M prepared {prepared:.0f} tps", listed["rps"] / prepared, None))

        settle()
        if want("relay"):
            with Profile("relay: raw publish") as raw_profile:
                raw = flow("raw-publish", scaled(20000))["raw_publish_per_s"]
            relay_profile = Profile("relay: 20,000-row backlog")
            relay = {"relay_per_s": drain(procs["outbox-relay"], int(scaled(20000)), relay_profile)["per_s"]}
            if relay_profile.split:
                # What the machine can do at most: its cores over the CPU one relayed event
                # costs, all processes together.
                costs = relay_profile.per_event_us(int(scaled(20000)))
                ceiling = os.cpu_count() * 1e6 / sum(costs.values())
                raw_costs = raw_profile.per_event_us(int(scaled(20000)))
                NOTES.append(
                    "Relay, CPU per event (perf): " + ", ".join(f"{g} {us:.0f} µs" for g, us in costs.most_common())
                    + f"; raw publishing costs RabbitMQ {raw_costs['RabbitMQ']:.0f} µs a message. With "
                    f"{os.cpu_count()} cores the relay can do at most {ceiling:.0f} events/s; it did "
                    f"{relay['relay_per_s']:.0f}/s ({relay['relay_per_s'] / ceiling:.0%} of that ceiling).")
            relay.update(flow("relay-latency"))
            rows.append(("relay: events/s (20,000-row backlog)", f"{relay['relay_per_s']:.0f}/s",
                     f"raw publish with confirms {raw:.0f}/s", relay["relay_per_s"] / raw, 0.70))
            rows.append(("  relay: commit → publish p50 / p99", f"{relay['commit_to_publish_p50_ms']:.1f} / {relay['commit_to_publish_p99_ms']:.1f} ms",
                     "—", None, "p50 < 20 ms", relay["commit_to_publish_p50_ms"] < 20))
            # Retention must outrun publishing, or a busy outbox grows without bound.
            kept = flow("retention", scaled(200000))
            rows.append(("  relay: retention, rows deleted/s (200,000 due)", f"{kept['retention_per_s']:.0f}/s",
                         f"relay publishes {relay['relay_per_s']:.0f}/s", None, "≥ 2,000/s",
                         kept["retention_per_s"] >= 2000))

        settle()
        if want("saga"):
            saga = flow("saga", scaled(5000))["saga_per_s"]
            base = pgbench(1, "pgbench_saga.sql")
            rows.append(("saga-worker: replies applied/s", f"{saga:.0f}/s", f"pgbench same transaction, 1 client {base:.0f} tps",
                     saga / base, 0.50))

        settle()
        if want("e2e"):
            e2e = flow("e2e", scaled(200), API)
            rows.append(("end to end: POST → Approved in the user's list", f"p50 {e2e['e2e_p50_ms']:.1f} ms, p99 {e2e['e2e_p99_ms']:.1f} ms",
                     "—", None, "p50 < 100 ms", e2e["e2e_p50_ms"] < 100))

        settle()
        if any(want_curve(c) for c in ("relay-curve", "contention", "cache-curve", "orders-curve")):
            CURVES.update(curves(env, rows, procs))

        for name, limit in [("api", 64), ("outbox-relay", 32), ("saga-worker", 32)] if want("rss") else ():
            rss = peak_rss_mb(procs[name].pid)
            rows.append((f"peak RSS under load: {name}", f"{rss:.1f} MB", "—", None, f"≤ {limit} MB", rss <= limit))
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", VHOST], capture_output=True)

    lines = ["| scenario | ours | baseline (same run) | ratio | target | met |", "|---|---|---|---|---|---|"]
    for row in rows:
        scenario, ours, baseline, ratio, target = row[:5]
        if target is None:
            lines.append(f"| {scenario} | {ours} | {baseline} | {ratio:.0%} | — | — |")
        elif ratio is None:
            met = row[5]
            lines.append(f"| {scenario} | {ours} | {baseline} | — | {target} | {'yes' if met else 'NO'} |")
        else:
            lines.append(f"| {scenario} | {ours} | {baseline} | {ratio:.0%} | ≥ {target:.0%} | {'yes' if ratio >= target else 'NO'} |")
    cores = os.cpu_count()
    memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 1024 / 1024
    header = (f"Measured {datetime.date.today().isoformat()} on this machine: {cores} cores, {memory:.0f} GiB, "
              f"PostgreSQL, Redis and RabbitMQ local; {DURATION} s per load; release build.")
    table = "\n".join(lines)
    if PROFILES and not SMOKE:
        table += ("\n\n## Where the time went (perf, every process on the machine by command; 100% = both cores)\n\n"
                  "| scenario | seconds | WAL flushes | per transaction | CPU by command |\n|---|---|---|---|---|\n")
        for p in PROFILES:
            busy = ", ".join(f"{comm} {share:.0f}%" for comm, share in sorted(p.split.items(), key=lambda kv: -kv[1])
                             if share >= 1.0)
            per = f"{p.syncs / p.transactions:.2f}" if p.transactions else "—"
            table += f"| {p.label} | {p.seconds:.1f} | {p.syncs} | {per} | {busy or 'perf not available'} |\n"
        table += "".join(f"\n{note}\n" for note in NOTES)
    if CURVES:
        # A full run draws into bench/ (linked from the README); the others into target/.
        draw_charts(ROOT / ("target/bench" if SMOKE or ONLY else "bench"))
    if SMOKE:
        header = f"Smoke run ({DURATION} s per load, debug build, flows a hundredth of the size): no figure means anything."
    elif not ONLY:
        (ROOT / "bench/RESULTS.md").write_text(f"# Benchmark results\n\n{header}\n\n{table}\n")
    print(header)
    print()
    print(table)


if __name__ == "__main__":
    main()
