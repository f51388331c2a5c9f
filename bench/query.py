"""Query latency: the query task over the broker vs the same query in-process, and the embedded stores.

    python bench/query.py [--sizes 1000,10000,100000] [--queries 200] [--local-points 0]

For each collection size (synthetic unit vectors, product-like payloads, one point per image):
* store    - upsert time, optimize time, reopen time, and store.search() p50/p99 (vector in, hits out);
* inproc   - the full query in this process: decode + embed + search (`pipeline.answer_query`);
* broker   - the same query submitted to a running `lookalike worker` through Redis (`lookalike.search` task,
             result back through the Redis result backend): p50/p99 and the broker's cost (broker - inproc).
--local-points N also loads N points into qdrant-client's local mode (the pure-Python stand-in) and times
upsert, search and reopen, for comparison with the edge engine. Writes bench/results/query.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import bench_environment

from lookalike.state.search import SearchRequest

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DIM = 512


def percentiles(samples: list[float]) -> dict[str, float]:
    values = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3)}


def synthetic_points(count: int, seed: int = 0) -> Any:
    from lookalike.producer.product import point_id_for
    from lookalike.worker.store import PointRecord

    rng = np.random.default_rng(seed)
    for start in range(0, count, 1000):
        vectors = rng.standard_normal((min(1000, count - start), DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield [
            PointRecord(
                point_id_for(f"prod-{(start + i) // 3}", f"https://cdn.example.com/{start + i}.jpg"),
                vector,
                {
                    "product_id": f"prod-{(start + i) // 3}",
                    "name": f"Product {(start + i) // 3}",
                    "category": "Home & Kitchen | Storage",
                    "categories": ["Home & Kitchen", "Storage"],
                    "image_url": f"https://cdn.example.com/{start + i}.jpg",
                    "product_url": f"https://www.example.com/dp/{(start + i) // 3}",
                    "price": "$19.99",
                },
            )
            for i, vector in enumerate(vectors)
        ]


def load_store(store: Any, count: int) -> float:
    started = time.perf_counter()
    store.ensure_collection(DIM)
    for batch in synthetic_points(count):
        store.upsert(batch)
    return time.perf_counter() - started


def time_searches(store: Any, queries: int) -> dict[str, float]:
    rng = np.random.default_rng(99)
    samples = []
    for _ in range(queries):
        vector = rng.standard_normal(DIM).astype(np.float32)
        started = time.perf_counter()
        store.search(vector / np.linalg.norm(vector), 20)
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def query_image() -> bytes:
    from lookalike.testing.images import product_bytes

    return product_bytes(4242, "JPEG", (800, 600))


def bench_size(count: int, queries: int, scratch: Path, env: dict[str, str]) -> dict[str, Any]:
    from lookalike.config.settings import get_settings, reset_settings
    from lookalike.worker import pipeline
    from lookalike.worker.store import EdgeStore

    path = scratch / f"qdrant-{count}"
    store = EdgeStore(path, "products")
    upsert = load_store(store, count)
    started = time.perf_counter()
    store.optimize()
    optimize = time.perf_counter() - started
    store.close()
    started = time.perf_counter()
    store = EdgeStore(path, "products")
    store.count()
    reopen = time.perf_counter() - started
    search = time_searches(store, queries)
    store.close()

    os.environ["LOOKALIKE_QDRANT_PATH"] = str(path)
    reset_settings()
    pipeline.reset_context()
    source = SearchRequest(image=query_image(), k=5)
    ctx = pipeline.current_context()
    pipeline.answer_query(ctx, source)  # warm: model loaded, store open
    samples = []
    for _ in range(queries):
        started = time.perf_counter()
        pipeline.answer_query(ctx, source)
        samples.append(time.perf_counter() - started)
    inproc = percentiles(samples)
    pipeline.reset_context()

    broker = bench_broker({**env, "LOOKALIKE_QDRANT_PATH": str(path)}, source, queries)
    assert get_settings().qdrant_path == path
    return {
        "points": count,
        "upsert_seconds": round(upsert, 2),
        "upsert_points_per_second": round(count / upsert),
        "optimize_seconds": round(optimize, 2),
        "reopen_seconds": round(reopen, 3),
        "store_search": search,
        "query_in_process": inproc,
        "query_over_broker": broker,
        "broker_adds_p50_ms": round(broker["p50_ms"] - inproc["p50_ms"], 3),
    }


def bench_broker(env: dict[str, str], source: SearchRequest, queries: int) -> dict[str, float]:
    from lookalike.app.gateway import ask_workers, live_workers
    from lookalike.worker.app import app

    lookalike = str(Path(sys.executable).with_name("lookalike"))
    worker = subprocess.Popen(
        [lookalike, "worker", "--queues", "query,index", "--loglevel", "WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not any("lookalike.query" in q for q in live_workers(app, 0.5).values()):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("query worker did not start")
        from lookalike.app.gateway import Gateway
        from lookalike.config.settings import get_settings

        gateway = Gateway(get_settings())
        source = gateway.preparer.prepare(source)  # as the gateway sends it: the transport JPEG
        ask_workers(app, source, timeout=60, replies=gateway.replies)  # warm
        samples = []
        for _ in range(queries):
            started = time.perf_counter()
            ask_workers(app, source, timeout=30, replies=gateway.replies)
            samples.append(time.perf_counter() - started)
        return percentiles(samples)
    finally:
        worker.terminate()
        worker.wait(60)


def bench_local_mode(count: int, queries: int, scratch: Path) -> dict[str, Any]:
    from lookalike.worker.store import ClientStore

    path = scratch / "local"
    store = ClientStore("products", path=path)
    upsert = load_store(store, count)
    search = time_searches(store, queries)
    store.close()
    started = time.perf_counter()
    store = ClientStore("products", path=path)
    store.count()
    reopen = time.perf_counter() - started
    store.close()
    return {
        "points": count,
        "upsert_seconds": round(upsert, 2),
        "upsert_points_per_second": round(count / upsert),
        "store_search": search,
        "reopen_seconds": round(reopen, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--local-points", type=int, default=0)
    parser.add_argument("--redis-db", type=int, default=14)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="lookalike-query-bench-"))
    env, model_kind = bench_environment(scratch, args.redis_db)
    import redis

    redis.Redis.from_url(env["LOOKALIKE_BROKER_URL"]).flushdb()
    report: dict[str, Any] = {"model": model_kind, "queries": args.queries, "edge": []}
    try:
        for size in (int(s) for s in args.sizes.split(",") if s):
            print(f"edge store, {size} points ...", file=sys.stderr)
            report["edge"].append(bench_size(size, args.queries, scratch, env))
        if args.local_points:
            print(f"qdrant-client local mode, {args.local_points} points ...", file=sys.stderr)
            report["local_mode"] = bench_local_mode(args.local_points, min(args.queries, 50), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\nquery latency ({report['model']}, {args.queries} queries each; milliseconds p50/p99)")
    header = (
        "points",
        "upsert/s",
        "optimize s",
        "reopen s",
        "store.search",
        "in-process",
        "over broker",
        "broker adds",
    )
    print("  ".join(f"{h:>12}" for h in header))
    for row in report["edge"]:
        cells = [
            str(row["points"]),
            str(row["upsert_points_per_second"]),
            f"{row['optimize_seconds']:.2f}",
            f"{row['reopen_seconds']:.2f}",
            f"{row['store_search']['p50_ms']:.2f}/{row['store_search']['p99_ms']:.2f}",
            f"{row['query_in_process']['p50_ms']:.2f}/{row['query_in_process']['p99_ms']:.2f}",
            f"{row['query_over_broker']['p50_ms']:.2f}/{row['query_over_broker']['p99_ms']:.2f}",
            f"{row['broker_adds_p50_ms']:.2f}",
        ]
        print("  ".join(f"{c:>12}" for c in cells))
    if "local_mode" in report:
        local = report["local_mode"]
        print(
            f"qdrant-client local mode, {local['points']} points: upsert {local['upsert_seconds']}s "
            f"({local['upsert_points_per_second']}/s), search p50 {local['store_search']['p50_ms']}ms, "
            f"reopen {local['reopen_seconds']}s"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "query.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    main()
