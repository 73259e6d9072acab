"""Draws make bench's cost curves (scripts/bench.py writes them as JSON) as PNG charts:
how each cost grows with the work. Run with target/tools/charts/bin/python (matplotlib,
installed by scripts/tools.sh).

    bench_charts.py CURVES_JSON OUT_DIR
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def chart(out, name, title, xlabel, series, ylabel, log_x=True):
    """One PNG: each series is (label, [(x, y), ...])."""
    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    for label, points in series:
        xs, ys = zip(*points, strict=False)
        axes.plot(xs, ys, marker="o", label=label)
    if log_x:
        axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / name)
    plt.close(figure)


def main():
    curves = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    drawn = 0
    relay = curves.get("relay_backlog")
    if relay:
        drawn += 2
        chart(
            out,
            "curve-relay-backlog.png",
            "Relay throughput by outbox backlog",
            "rows waiting (log)",
            [("events/s", [(p["backlog"], p["per_s"]) for p in relay])],
            "events published per second",
        )
        chart(
            out,
            "curve-relay-batch.png",
            "Relay batch (claim, publish, move) by outbox backlog",
            "rows waiting (log)",
            [("mean batch, ms", [(p["backlog"], p["batch_ms"]) for p in relay])],
            "milliseconds",
        )
    cache = curves.get("cache_hit")
    if cache:
        drawn += 1
        chart(
            out,
            "curve-cache-hit.png",
            "Cached page of a user's orders (limit 20), 64 connections",
            "the user's orders (log)",
            [("req/s", [(p["orders"], p["rps"]) for p in cache])],
            "requests per second",
        )
    orders = curves.get("orders")
    if orders:
        drawn += 1
        chart(
            out,
            "curve-orders.png",
            "POST and GET /api/v1/orders/ by orders in the database, 16 connections",
            "orders in the database (log)",
            [
                (label, [(p["orders"], p[key]) for p in orders])
                for label, key in [
                    ("POST p50 ms", "post_p50"),
                    ("POST p99 ms", "post_p99"),
                    ("GET first page p99 ms", "first_p99"),
                    ("GET deep page p99 ms", "deep_p99"),
                ]
            ],
            "milliseconds",
        )
    print(f"bench_charts: {drawn} charts in {out}")


if __name__ == "__main__":
    main()
