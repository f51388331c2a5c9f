"""Producer speed: how long `lookalike ingest` takes to read a catalogue and enqueue its jobs.

    python bench/enqueue.py [--products 10000] [--images-per-product 3]

No worker runs: the jobs stay queued (the backpressure high-water mark is raised above the job count for the
measurement) and the Redis database is flushed afterwards. Writes bench/results/enqueue.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--images-per-product", type=int, default=3)
    parser.add_argument("--redis-db", type=int, default=14)
    args = parser.parse_args()

    import redis

    from lookalike.testing.catalogs import catalog_row, write_catalog

    scratch = Path(tempfile.mkdtemp(prefix="lookalike-enqueue-"))
    catalog = scratch / "catalog.csv"
    rows = (
        catalog_row(
            f"p-{i:06d}", f"Product {i}", [f"https://cdn.example/{i}-{j}.jpg" for j in range(args.images_per_product)]
        )
        for i in range(args.products)
    )
    write_catalog(catalog, rows)
    jobs = args.products * args.images_per_product
    url = f"redis://127.0.0.1:6379/{args.redis_db}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    env = {
        **os.environ,
        "LOOKALIKE_BROKER_URL": url,
        "LOOKALIKE_KEY_PREFIX": "lookalike-bench",
        "LOOKALIKE_FETCH_HIGH_WATER": str(jobs + 1),
        "LOOKALIKE_QDRANT_PATH": str(scratch / "qdrant"),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lookalike")), "ingest", str(catalog), "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - started
    summary = json.loads(done.stdout)
    queued = client.llen("lookalike.fetch")
    client.flushdb()
    report = {
        "products": args.products,
        "jobs": summary["images_enqueued"],
        "queued": queued,
        "seconds": round(seconds, 2),
        "jobs_per_second": round(summary["images_enqueued"] / seconds),
    }
    print(
        f"{report['jobs']} jobs from {args.products} products enqueued in {seconds:.1f} s "
        f"({report['jobs_per_second']} jobs/s, including reading the CSV and starting the command)"
    )
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "enqueue.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
