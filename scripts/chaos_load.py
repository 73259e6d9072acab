"""The load of scripts/chaos.py: the seeded catalogue, the clients' order stream the
faults are injected into, and the api at saturation (wrk, scripts/chaos_load.lua), then
again while its PostgreSQL connections are killed."""

import collections
import decimal
import os
import random
import re
import subprocess
import threading
import time
import uuid

from chaos_system import (
    API,
    CLIENTS,
    LOAD_SECONDS,
    ORDERS,
    PRODUCTS,
    SECONDS,
    SEED,
    USERS,
    Client,
    address_id,
    api_counter,
    product_id,
    terminate_service_sessions,
    user_id,
)
from harness import ROOT


def seed(rng):
    """PRODUCTS products at seeded prices and USERS users with an address each, through
    the api; returns the prices by product id."""
    client = Client()
    prices = {}
    for i in range(1, PRODUCTS + 1):
        price = decimal.Decimal(rng.randrange(5000, 60000)) / 100
        prices[product_id(i)] = price
        product = {
            "productID": product_id(i),
            "name": f"Chaos {i}",
            "price": float(price),
            "discount": 0,
            "description": "chaos",
        }
        status, body = client.call("POST", "/api/v1/products/", product)
        assert status == 204, (status, body)
    for i in range(1, USERS + 1):
        address = {
            "addressID": address_id(i),
            "buildingNumber": i,
            "streetName": "Main",
            "city": "Chaos",
            "country": "Testland",
        }
        status, body = client.call("POST", "/api/v1/address/", address)
        assert status == 204, (status, body)
        user = {"userID": user_id(i), "username": f"user{i}", "addressID": address_id(i)}
        status, body = client.call("POST", "/api/v1/users/", user)
        assert status == 204, (status, body)
    return prices


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
            status, body = http_client.call(
                "POST",
                "/api/v1/orders/",
                {
                    "orderID": order,
                    "paymentMethod": rng.choice(["Online", "Card"]),
                    "productsIds": products,
                    "userID": user_id(user),
                    "deliveryAddress": address_id(user),
                },
            )
            results.append(
                {
                    "order": order,
                    "status": status,
                    "body": body,
                    "user": user_id(user),
                    "total": sum(prices[p] for p in products),
                    "products": products,
                }
            )
            if k % 4 == 0:
                http_client.call("GET", f"/api/v1/orders/user/{user_id(rng.randrange(1, USERS + 1))}?limit=1000")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    return threads


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
    wrk = ["wrk", "-t", "2", "-c", "32", "-d", f"{LOAD_SECONDS}s", "-s", str(ROOT / "scripts/chaos_load.lua")]
    out = subprocess.run([*wrk, f"http://{API}"], check=True, text=True, capture_output=True, env=env).stdout
    stop.set()
    if kill_connections:
        thread.join()
    counts = {int(s): int(n) for s, n in re.findall(r"^status (\d+) (\d+)$", out, re.M)}
    interrupted = int(api_counter("db_requests_interrupted_total") - interrupted_before)
    replaced = int(api_counter("db_connections_lost_total") - replaced_before)
    phase = f"load{' with kills' if kill_connections else ''}"
    if counts.get(503, 0) > interrupted:
        violations.append(
            f"{phase}: {counts[503]} answers 503, but only {interrupted} requests had their transaction interrupted"
        )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    allowed = {200, 204, 503} if kill_connections else {200, 204}
    for status, n in counts.items():
        if status not in allowed:
            violations.append(f"{phase}: {n} answers {status}")
    # The api recovers by itself: orders go through again, 20 in a row, at once.
    client = Client()
    deadline, streak, failed = time.time() + 10, 0, collections.Counter()
    while streak < 20 and time.time() < deadline:
        order = {
            "orderID": str(uuid.uuid4()),
            "paymentMethod": "Cash",
            "productsIds": [product_id(1)],
            "userID": user_id(1),
            "deliveryAddress": address_id(1),
        }
        status, _ = client.call("POST", "/api/v1/orders/", order)
        streak = streak + 1 if status == 204 else 0
        if status != 204:
            failed[status] += 1
    if streak < 20 or set(failed) - {503}:
        violations.append(f"after the {phase}: no recovery within 10 s ({dict(failed)} on the way)")
    return {
        "rps": rps,
        "statuses": counts,
        "kills": kills,
        "recovery_503s": failed[503],
        "interrupted": interrupted,
        "replaced": replaced,
    }
