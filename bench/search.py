"""Search latency by query kind at 100,000 points on the embedded store, excluding the model call.

    python bench/search.py [--points 100000] [--queries 300]

Builds a collection in the current layout (synthetic unit vectors, product-like payloads with words drawn from
a vocabulary, BM25 keyword vectors, three images per product), optimizes it, then times the store owner's
whole share of a query (`worker/query.py: search_request`: BM25 tokenizing, the engine queries, widening,
one result per product, the result objects) for each kind: image, text (CLIP text vector: the same engine
work as image), keyword, hybrid, filtered (category + price range) and similar (the product's own vectors).
Writes bench/results/search.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.producer.product import point_id_for
from lookalike.state.search import Filters, SearchRequest
from lookalike.worker.keywords import document_vector
from lookalike.worker.query import search_request
from lookalike.worker.store import EdgeStore, PointRecord

ROOT = Path(__file__).resolve().parent
DIM = 512
WORDS = tuple(
    " ".join(
        (
            "kettle teapot mug jacket scarf puzzle drone blocks lamp lantern chair table sofa rug pillow blanket",
            "towel bottle flask pan pot knife spoon fork plate bowl glass cup shirt dress skirt sock shoe boot",
            "sandal hat cap belt wallet bag backpack watch ring necklace bracelet earring phone case cable",
            "charger speaker headphone camera tripod lens drill hammer saw wrench screwdriver glove helmet bike",
            "ball bat racket tent stove",
        )
    ).split()
)
CATEGORIES = ["Home & Kitchen | Dining", "Clothing | Women", "Toys & Games | Puzzles", "Sports & Outdoors | Camping"]


def build(store: EdgeStore, points: int, *, optimize: bool = True) -> dict[str, float]:
    rng = np.random.default_rng(0)
    store.ensure_collection(DIM)
    started = time.perf_counter()
    for start in range(0, points, 1000):
        vectors = rng.standard_normal((min(1000, points - start), DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        batch = []
        for i, vector in enumerate(vectors):
            n = start + i
            product = n // 3
            words = " ".join(WORDS[(product * k + k) % len(WORDS)] for k in (1, 7, 13))
            category = CATEGORIES[product % len(CATEGORIES)]
            payload = {
                "product_id": f"prod-{product}",
                "name": f"{words} {product}",
                "category": category,
                "categories": [c.strip() for c in category.split("|")],
                "price_value": float(5 + product % 200),
                "price": f"${5 + product % 200}.00",
                "image_url": f"https://cdn.example.com/{n}.jpg",
                "primary": int(n % 3 == 0),
            }
            batch.append(
                PointRecord(
                    point_id_for(payload["product_id"], payload["image_url"]),
                    vector,
                    payload,
                    keywords=document_vector(payload),
                )
            )
        store.upsert(batch)
    upsert = time.perf_counter() - started
    if not optimize:
        return {"upsert_seconds": round(upsert, 1)}
    started = time.perf_counter()
    store.optimize()
    return {"upsert_seconds": round(upsert, 1), "optimize_seconds": round(time.perf_counter() - started, 1)}


def percentiles(samples: list[float]) -> dict[str, float]:
    values = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p99_ms": round(float(np.percentile(values, 99)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="lookalike-search-bench-"))
    store = EdgeStore(scratch, "products")
    report: dict[str, Any] = {"points": args.points, **build(store, args.points)}
    rng = np.random.default_rng(1)

    def vector() -> np.ndarray:
        v = rng.standard_normal(DIM).astype(np.float32)
        return v / np.linalg.norm(v)

    products = args.points // 3
    kinds = {
        "image": lambda i: (SearchRequest(image_url="https://q.example/x.jpg", k=10), vector()),
        "text": lambda i: (SearchRequest(text=WORDS[i % len(WORDS)], mode="semantic", k=10), vector()),
        "keyword": lambda i: (
            SearchRequest(text=f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5) % len(WORDS)]}", mode="keyword", k=10),
            None,
        ),
        "hybrid": lambda i: (
            SearchRequest(text=f"{WORDS[i % len(WORDS)]} {WORDS[(i * 5) % len(WORDS)]}", k=10),
            vector(),
        ),
        "filtered": lambda i: (
            SearchRequest(
                image_url="https://q.example/x.jpg",
                k=10,
                filters=Filters(category="Clothing", min_price=20, max_price=80),
            ),
            vector(),
        ),
        "similar": lambda i: (SearchRequest(product_id=f"prod-{(i * 7919) % products}", k=10), None),
        "facets": lambda i: (SearchRequest(image_url="https://q.example/x.jpg", k=10, facets=True), vector()),
    }
    timings: dict[str, Any] = {}
    for kind, make in kinds.items():
        samples = []
        for i in range(args.queries + 10):
            request, query_vector = make(i)
            started = time.perf_counter()
            response = search_request(request, query_vector, store=store)
            if i >= 10:  # the first few warm the caches
                samples.append(time.perf_counter() - started)
            assert response.results or kind == "keyword", kind
        timings[kind] = percentiles(samples)
        print(f"{kind:9s} p50 {timings[kind]['p50_ms']:7.2f} ms   p99 {timings[kind]['p99_ms']:7.2f} ms", flush=True)
    report["queries"] = timings
    report["hybrid_over_image_p50"] = round(timings["hybrid"]["p50_ms"] / timings["image"]["p50_ms"], 2)
    store.close()
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "search.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
