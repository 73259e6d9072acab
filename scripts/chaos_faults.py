"""The faults of scripts/chaos.py: a seeded schedule of them over the order stream, and
the recovery from each, measured by probes of its own (`FaultSchedule.recovery()`)."""

import collections
import dataclasses
import http.client
import json
import random
import subprocess
import threading
import time
import uuid

import pika

import harness
from chaos_system import (
    AMQP_NODE_URLS,
    AMQP_PORTS,
    CLUSTER,
    NODES,
    PARTITION_SECONDS,
    RECOVERY_SECONDS,
    SECONDS,
    SHORT,
    USERS,
    VHOST,
    Client,
    address_id,
    api_counter,
    cluster_up,
    ctl,
    kill_node,
    log,
    psql,
    queue_depths,
    quorum_leader,
    rabbit_connections,
    rows,
    terminate_service_sessions,
    user_id,
)


def publish_confirmed(messages, queue="CustomerSaga", deadline=120):
    """Publishes straight to a queue with confirms, retrying while the broker is down."""
    end = time.time() + deadline
    while True:
        try:
            params = [pika.URLParameters(url) for url in AMQP_NODE_URLS]
            for node in params:
                node.connection_attempts, node.retry_delay = 1, 0
            with pika.BlockingConnection(params) as connection:
                channel = connection.channel()
                channel.confirm_delivery()
                for message_id, body in messages:
                    properties = pika.BasicProperties(
                        message_id=message_id, delivery_mode=2, content_type="application/json"
                    )
                    channel.basic_publish("", queue, body, properties, mandatory=True)
                return
        except pika.exceptions.AMQPError as e:
            if time.time() > end:
                raise
            log(f"publish failed ({type(e).__name__}), retrying")
            time.sleep(1)


def poison_messages():
    messages = []
    for n in range(3):
        messages += [
            (f"chaos-poison-malformed-{n}", b"{not json"),
            (f"chaos-poison-missing-{n}", json.dumps({"orderID": str(uuid.uuid4())}).encode()),
            (f"chaos-poison-bad-id-{n}", json.dumps({"orderID": "not-a-uuid", "orderType": "Approved"}).encode()),
            (f"chaos-poison-bad-type-{n}", json.dumps({"orderID": str(uuid.uuid4()), "orderType": "Maybe"}).encode()),
            (
                f"chaos-poison-unknown-order-{n}",
                json.dumps({"orderID": str(uuid.uuid4()), "orderType": "Approved"}).encode(),
            ),
        ]
    return messages


@dataclasses.dataclass
class Recovery:
    """What the schedule measured of the system's recovery from its faults."""

    # Seconds from each fault to the system's recovery, by fault kind.
    times: dict[str, list[float]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    # Silent faults the system had not recovered from RECOVERY_SECONDS later: by kind, what
    # was still wrong then, once per fault.
    unrecovered: dict[str, list[str]] = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    # What each silent fault froze: "kind: details", in order.
    silences: list[str] = dataclasses.field(default_factory=list)
    # The orders the recovery probes placed (as the clients' results; the ledger checks them).
    canaries: list[dict] = dataclasses.field(default_factory=list)


class FaultSchedule:
    """The faults, at seeded times over the order stream (`SECONDS`): `run()` injects
    them, `recovery()` then says how the system recovered from them."""

    def __init__(self, rng, procs, redis, poison, proxies, prices):
        self.rng, self.procs, self.redis, self.proxies = rng, procs, redis, proxies
        self.poison, self.prices = poison, prices
        self._measured = Recovery()
        # The threads measuring recovery from the silent faults.
        self._probes = []
        # Set once the clients have sent every order: a recovery probe then places an
        # order of its own to see one complete.
        self._stream_over = threading.Event()
        self.faults = self._plan()

    def _plan(self):
        """(at seconds, kind, action) in time order, over the order stream."""
        rng = self.rng
        rounds = 1 if SHORT else 2
        faults = []
        for _ in range(rounds):
            for name in ("pg", "rabbitmq", "redis"):
                faults += [
                    (f"{name} silent partition", self._silent_partition(name)),
                    (f"{name} failover", self._failover(name)),
                ]
            faults += [
                ("sigkill relay", self._kill(f"outbox-relay-{rng.choice((1, 2))}")),
                ("sigkill worker", self._kill(f"saga-worker-{rng.choice((1, 2))}")),
                ("broker closes connections", self._close_connections),
                ("rabbitmq stop_app/start_app", self._rabbit_restart),
                ("redis restart", self._redis_restart),
                ("pg_terminate_backend", terminate_service_sessions),
                ("pg_terminate_backend", terminate_service_sessions),
                ("consumer cancelled", self._cancel_consumers),
                ("memory alarm", self._memory_alarm),
            ]
            if CLUSTER:
                faults += [
                    ("rabbitmq node of a relay killed", self._kill_node(self._node_of_a_relay)),
                    ("rabbitmq CustomerSaga leader killed", self._kill_node(lambda: quorum_leader("CustomerSaga"))),
                    ("rabbitmq majority lost", self._lose_majority),
                ]
        faults.append(("poison replies", self._inject_poison))
        rng.shuffle(faults)
        # Spread over the stream, with a little jitter, leaving its last tenth quiet.
        step = SECONDS * 0.9 / len(faults)
        return [(i * step + rng.uniform(0, step / 2), kind, act) for i, (kind, act) in enumerate(faults)]

    def run(self, start):
        """Injects every fault at its time after `start` (a time.time()); returns how many
        of each kind were injected (an action that returns False did not inject)."""
        injected = collections.Counter()
        for at, kind, act in self.faults:
            delay = start + at - time.time()
            if delay > 0:
                time.sleep(delay)
            log(f"fault at {time.time() - start:5.1f} s: {kind}")
            if act() is not False:
                injected[kind] += 1
        return injected

    def stream_over(self):
        """The clients have sent every order: from now on a probe places its own."""
        self._stream_over.set()

    def recovery(self):
        """Waits for the recovery probes (each gives up RECOVERY_SECONDS after its fault),
        then returns what was measured."""
        for probe in self._probes:
            probe.join()
        return self._measured

    # --- the faults ----------------------------------------------------------------------

    def _kill(self, name):
        def act():
            self.procs[name].kill9()
            time.sleep(self.rng.uniform(0.5, 3))
            self.procs[name].held = False  # the supervisor restarts it

        return act

    def _close_connections(self):
        for name in rabbit_connections():
            ctl("-q", "close_connection", name, "chaos: closed from the broker", check=False)

    def _rabbit_restart(self):
        ctl("-q", "stop_app")
        time.sleep(self.rng.uniform(1, 4))
        ctl("-q", "start_app")
        ctl("-q", "await_startup")

    def _node_of_a_relay(self):
        """The node one of the relays is connected to (the broker's port tells the node),
        or any node when neither is connected at the moment."""
        out = ctl("-q", "list_connections", "-p", VHOST, "client_properties", "port", "--formatter", "json")
        for connection in json.loads(out or "[]"):
            name = next((p[2] for p in connection["client_properties"] if p[0] == "connection_name"), "")
            if name.startswith("outbox-relay@"):
                return connection["port"] - AMQP_PORTS[0] + 1
        return self.rng.choice(NODES)

    def _kill_node(self, choose):
        """kill -9 of the cluster node `choose()` names, restarted a few seconds later; the
        two others keep a majority, so the recovery is measured from the kill."""

        def act():
            node = choose()
            kill_node(node)
            killed = time.time()
            log(f"rabbitc{node} killed")
            self._measure_recovery("rabbitmq node killed", "rabbitmq", killed)
            time.sleep(self.rng.uniform(2, 5))
            cluster_up()
            log(f"rabbitc{node} back after {time.time() - killed:.1f} s")

        return act

    def _lose_majority(self):
        """kill -9 of two nodes at once (no majority: the quorum queues stop taking and
        giving messages) for 8-12 s, then both restarted; the recovery is measured from the
        majority's return."""
        nodes = self.rng.sample(NODES, 2)
        for node in nodes:
            kill_node(node)
        killed = time.time()
        log(f"rabbitc{nodes[0]} and rabbitc{nodes[1]} killed: no majority")
        time.sleep(self.rng.uniform(8, 12))
        cluster_up()
        log(f"majority back after {time.time() - killed:.1f} s")
        self._measure_recovery("rabbitmq majority lost", "rabbitmq", time.time())

    def _redis_restart(self):
        self.redis.stop()
        time.sleep(self.rng.uniform(0.5, 2))
        self.redis.start()

    def _inject_poison(self):
        publish_confirmed(self.poison)

    def _cancel_consumers(self):
        """Has the broker cancel both workers' consumers by deleting CustomerSaga, losing
        nothing: the simulator (its only publisher here) is paused until the queue holds
        no message, ready or unacked (quorum queues refuse `delete_queue --if-empty`),
        and resumed once it is deleted; its replies meanwhile are unroutable and come
        back to it. The workers must redeclare the queue and consume again: records how
        long until both do. Returns False when the queue never emptied."""
        with harness.paused(self.procs["customer-simulator"].proc):
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
        cancelled = time.time()
        while time.time() < cancelled + 60:
            consumers = ctl("-q", "list_consumers", "-p", VHOST, "--no-table-headers", "queue_name", check=False)
            if sum(1 for line in consumers.splitlines() if line.strip() == "CustomerSaga") >= 2:
                self._measured.times["consumer cancelled"].append(time.time() - cancelled)
                return True
            time.sleep(0.1)
        log("the workers did not consume CustomerSaga again within 60 s")
        return True

    def _memory_alarm(self):
        """Blocks every publisher of the broker for a few seconds, then restores the
        node's own watermark."""
        before = ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().").strip().strip("{}")
        restore = ["absolute", before.split(",")[1]] if before.startswith("absolute") else [before.split(",")[-1]]
        ctl("-q", "set_vm_memory_high_watermark", "0.0000001")
        try:
            time.sleep(self.rng.uniform(4, 10))
        finally:
            ctl("-q", "set_vm_memory_high_watermark", *restore)
        cleared = time.time()
        # How long the backlog the alarm held back takes to leave once it clears.
        while time.time() < cleared + 60:
            if int(psql("SELECT count(*) FROM outbox WHERE created_at < now() - interval '1 second'")) == 0:
                self._measured.times["memory alarm"].append(time.time() - cleared)
                return
            time.sleep(0.1)

    def _silent_partition(self, name):
        """Every connection to the server, open and new, frozen for a few seconds, then
        healed; the recovery is measured from the heal."""

        def act():
            proxy = self.proxies[name]
            seconds = self.rng.uniform(*PARTITION_SECONDS)
            frozen = proxy.partition()
            try:
                time.sleep(seconds)
            finally:
                held = proxy.stats()["held"]
                proxy.heal()
            self._measured.silences.append(
                f"{name} silent partition: {frozen} connections frozen for {seconds:.1f} s, {held} new ones held"
            )
            log(f"{name}: healed after {seconds:.1f} s ({frozen} connections frozen, {held} new ones held)")
            self._measure_recovery(f"{name} silent partition", name, time.time())

        return act

    def _failover(self, name):
        """The connections open now frozen for good (until the run ends), new ones pass:
        the recovery is measured from the failover itself."""

        def act():
            frozen = self.proxies[name].freeze_current_for_good()
            self._measured.silences.append(f"{name} failover: {frozen} connections frozen for good")
            log(f"{name}: {frozen} connections frozen for good")
            self._measure_recovery(f"{name} failover", name, time.time())

        return act

    # --- recovery from the silent faults ---------------------------------------------------

    def _measure_recovery(self, kind, server, back):
        """In a thread of its own (the schedule goes on): records how long after `back`
        the system had recovered from a silent fault of `server`, or what was still wrong
        RECOVERY_SECONDS later."""

        def probe():
            # The clients' timeout: an order the api took late is still answered.
            state, wrong = {"client": Client(timeout=30 if server != "redis" else 5)}, ["not looked at"]
            while time.time() < back + RECOVERY_SECONDS:
                try:
                    wrong = self._not_recovered(server, back, state)
                    if not wrong:
                        self._measured.times[kind].append(time.time() - back)
                        return
                except (OSError, subprocess.CalledProcessError, http.client.HTTPException) as e:
                    wrong = [f"the probe failed ({type(e).__name__}: {e})"]
                time.sleep(0.25)
            self._measured.unrecovered[kind].append("; ".join(wrong))
            log(f"{kind}: no recovery within {RECOVERY_SECONDS} s: {'; '.join(wrong)}")

        thread = threading.Thread(target=probe, name=f"recovery of {kind}", daemon=True)
        thread.start()
        self._probes.append(thread)

    def _not_recovered(self, server, back, state):
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
            reads = api_counter("cache_requests_total", 'result="hit"') + api_counter(
                "cache_requests_total", 'result="miss"'
            )
            answered = state.get("reads") is not None and reads > state["reads"]
            state["reads"] = reads
            return [] if answered else ["the api's cache reads are not answered by Redis"]
        at = f"to_timestamp({back})"
        old_events, old_pending, completed = map(
            int,
            rows(
                f"SELECT (SELECT count(*) FROM outbox WHERE created_at < {at}),"
                f" (SELECT count(*) FROM orders WHERE saga_status = 'Pending' AND created_at < {at}),"
                f" (SELECT count(*) FROM orders WHERE saga_status <> 'Pending' AND created_at >= {at})"
            )[0],
        )
        wrong = []
        if old_events:
            wrong.append(f"{old_events} outbox rows from before still unpublished")
        if old_pending:
            wrong.append(f"{old_pending} orders from before still Pending")
        if not completed:
            wrong.append("no order created since has completed")
            if self._stream_over.is_set() and not state.get("canary") and time.time() > state.get("canary_at", 0) + 1:
                state["canary_at"] = time.time()
                state["canary"], status = self._place_canary(state["client"])
                if not state["canary"]:
                    wrong.append(f"the api did not take an order ({status or 'no answer'})")
        return wrong

    def _place_canary(self, client):
        """One order placed by a recovery probe, recorded for the ledger: (its id if it was
        taken (204), the status)."""
        rng = random.Random()
        products = rng.sample(sorted(self.prices), 3)
        user = rng.randrange(1, USERS + 1)
        order = str(uuid.uuid4())
        status, body = client.call(
            "POST",
            "/api/v1/orders/",
            {
                "orderID": order,
                "paymentMethod": "Card",
                "productsIds": products,
                "userID": user_id(user),
                "deliveryAddress": address_id(user),
            },
        )
        self._measured.canaries.append(
            {
                "order": order,
                "status": status,
                "body": body,
                "user": user_id(user),
                "total": sum(self.prices[p] for p in products),
                "products": products,
            }
        )
        return (order if status == 204 else None), status
