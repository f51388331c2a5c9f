"""Duplicate listings at scale: the full scan's time, and what the index stage's check adds to ingestion.

    python bench/duplicates.py --points 100000            # the README's figures (2 cores, a quiet machine)
    python bench/duplicates.py --points 5000 --skip-vit   # a quick check that it runs

* store side - N random unit vectors (512-d, the image model's width) as points of N products, of which a share
  (``--copies``, 2%) have 1-3 near-copies under other product ids (the vector plus a little noise, cosine
  ~0.98-0.995: a re-encoded or resized photo). Random vectors, not images: the store's work depends on how many
  points there are and how many pairs pass, not on what the vectors show, and embedding 100,000 images at
  ViT-B/32 cost would take hours. Written into the embedded qdrant-edge store in batches and optimized, as a
  finished ingest leaves it.
* scan - `lookalike duplicates scan`'s loop in this process (the same function the store owner's task runs),
  page after page, with the pairs written to Redis; its time, and the share of the planted copies it found.
* incremental check - batches of 32 fresh points (a quarter of them copies of stored points) upserted as the
  index stage does, then checked (one batched query per batch, the pairs written to Redis); the check's
  milliseconds per image beside the upsert's.
* ingestion at ViT-B/32 cost - the model alone (lookalike.testing.vit_model, CLIP ViT-B/32's graph with random
  weights) embedding batches of 32 with every core: seconds per image, a lower bound of ingestion's time per
  image, so the check's share of it is an upper bound. The recorded end-to-end figure (bench/ingest.py --vit,
  bench/results/ingest-N2000-L100-vit.json) is shown beside it when present.

Prints a table and the README's command line; writes bench/results/duplicates-N<points>.json. Uses Redis
database --redis-db (flushed of the bench's own keys first).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
DIM = 512
BATCH = 32
PREFIX = "lookalike-bench-duplicates"


def planted_vectors(points: int, copies: float, seed: int) -> tuple[np.ndarray, list[str], set[frozenset[str]]]:
    """(vectors, product id of each, the planted product pairs: every two listings of one photo)."""
    rng = np.random.default_rng(seed)
    originals = int(points / (1 + copies * 2))  # each planted original has 2 copies on average
    vectors = rng.standard_normal((points, DIM)).astype(np.float32)
    products = [f"p{i}" for i in range(points)]
    truth: set[frozenset[str]] = set()
    index = originals
    for source in rng.choice(originals, size=int(originals * copies), replace=False):
        group = [products[source]]
        for _ in range(int(rng.integers(1, 4))):
            if index >= points:
                break
            noise = rng.standard_normal(DIM).astype(np.float32)
            vectors[index] = vectors[source] / np.linalg.norm(vectors[source]) + noise / np.linalg.norm(noise) * 0.12
            group.append(products[index])
            index += 1
        truth.update(frozenset(pair) for pair in itertools.combinations(group, 2))  # copies of one photo, all
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, products, truth


def records(vectors: np.ndarray, products: list[str], start: int = 0) -> list[Any]:
    from lookalike.producer.product import point_id_for
    from lookalike.worker.store import PointRecord

    return [
        PointRecord(
            point_id_for(product, f"https://img.example/{product}.jpg"),
            vector,
            {"product_id": product, "image_url": f"https://img.example/{product}.jpg"},
        )
        for product, vector in zip(products[start:], vectors[start:], strict=True)
    ]


def build_store(directory: Path, vectors: np.ndarray, products: list[str]) -> tuple[Any, dict[str, float]]:
    from lookalike.worker.store import EdgeStore

    shutil.rmtree(directory, ignore_errors=True)
    store = EdgeStore(directory, "products")
    store.ensure_collection(DIM)
    started = time.perf_counter()
    every = records(vectors, products)
    for offset in range(0, len(every), 1000):
        store.upsert(every[offset : offset + 1000])
    written = time.perf_counter() - started
    started = time.perf_counter()
    store.optimize()
    return store, {"upsert_seconds": round(written, 2), "optimize_seconds": round(time.perf_counter() - started, 2)}


def run_scan(store: Any, book: Any, floor: float, truth: set[frozenset[str]], page: int) -> dict[str, Any]:
    from lookalike.state.duplicate_groups import Thresholds
    from lookalike.worker.duplicates import scan_page

    thresholds = Thresholds(default=floor, categories={})
    started = time.perf_counter()
    state = scan_page(book, store, thresholds, restart=True, page=page)
    while not state["done"]:
        state = scan_page(book, store, thresholds, page=page)
    seconds = time.perf_counter() - started
    found = {frozenset(pair.products) for pair in book.pairs()}
    return {
        "points": state["scanned"],
        "seconds": round(seconds, 2),
        "points_per_second": round(state["scanned"] / seconds, 1),
        "image_pairs_recorded": book.count_pairs(),
        "planted_pairs": len(truth),
        "planted_found": len(found & truth),
        "other_pairs": len(found - truth),
        "page": page,
    }


def run_incremental(
    store: Any, book: Any, floor: float, vectors: np.ndarray, batches: int, seed: int
) -> dict[str, Any]:
    from lookalike.worker.duplicates import check_records

    rng = np.random.default_rng(seed + 1)
    upsert = check = 0.0
    pairs = 0
    for number in range(batches):
        fresh = rng.standard_normal((BATCH, DIM)).astype(np.float32)
        for row in range(BATCH // 4):  # a quarter are copies of stored points
            source = vectors[int(rng.integers(len(vectors)))]
            noise = rng.standard_normal(DIM).astype(np.float32)
            fresh[row] = source + noise / np.linalg.norm(noise) * 0.12
        fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
        batch = records(fresh, [f"new-{number}-{row}" for row in range(BATCH)])
        started = time.perf_counter()
        store.upsert(batch)
        upsert += time.perf_counter() - started
        started = time.perf_counter()
        pairs += check_records(book, store, batch, floor)
        check += time.perf_counter() - started
    images = batches * BATCH
    return {
        "batches": batches,
        "images": images,
        "upsert_ms_per_image": round(upsert / images * 1000, 3),
        "check_ms_per_image": round(check / images * 1000, 3),
        "check_ms_per_batch": round(check / batches * 1000, 2),
        "pairs_recorded": pairs,
    }


def vit_seconds_per_image(work: Path, batches: int) -> dict[str, Any]:
    """The model alone at ViT-B/32 cost, every core, batches of 32."""
    from PIL import Image

    from lookalike.config.settings import Settings
    from lookalike.testing.vit_model import build_vit_model
    from lookalike.worker.embed import Embedder

    model_dir = work / "vit-fp32"
    if not (model_dir / "model.onnx").exists():
        build_vit_model(model_dir)
    cores = len(os.sched_getaffinity(0))
    settings = Settings(model_dir=model_dir, onnx_threads=cores, embed_concurrency=1)
    embedder = Embedder(Embedder.spec_from(settings))
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)) for _ in range(BATCH)]
    embedder.embed(images[:2])  # warm up
    started = time.perf_counter()
    for _ in range(batches):
        embedder.embed(images)
    seconds = (time.perf_counter() - started) / (batches * BATCH)
    return {"seconds_per_image": round(seconds, 4), "images_per_second": round(1 / seconds, 2), "threads": cores}


def recorded_vit_ingest() -> dict[str, Any] | None:
    path = RESULTS / "ingest-N2000-L100-vit.json"
    if not path.exists():
        return None
    run = json.loads(path.read_text())["vit"]["fp32"]["lookalike"]
    return {"source": str(path.relative_to(ROOT.parent)), "images_per_second": run["images_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--copies", type=float, default=0.02, help="share of originals with planted near-copies")
    parser.add_argument("--batches", type=int, default=100, help="index batches of 32 for the incremental check")
    parser.add_argument("--page", type=int, default=1000, help="points per scan page")
    parser.add_argument("--vit-batches", type=int, default=4, help="batches of 32 the ViT-B/32 cost is timed on")
    parser.add_argument("--skip-vit", action="store_true", help="do not build and time the ViT-B/32 graph")
    parser.add_argument("--redis-db", type=int, default=14)
    parser.add_argument("--work", type=Path, default=ROOT / "work", help="scratch directory (store, ViT graph)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    os.environ["LOOKALIKE_BROKER_URL"] = f"redis://127.0.0.1:6379/{args.redis_db}"
    os.environ["LOOKALIKE_KEY_PREFIX"] = PREFIX
    import redis

    from lookalike.config.settings import get_settings
    from lookalike.state.duplicates import duplicate_book

    settings = get_settings()
    floor = settings.duplicates_min_score
    client = redis.Redis.from_url(settings.broker_url.get_secret_value())
    for key in client.scan_iter(f"{PREFIX}:*", count=1000):
        client.delete(key)
    book = duplicate_book(client, PREFIX, "products")
    args.work.mkdir(parents=True, exist_ok=True)

    cores = len(os.sched_getaffinity(0))
    print(f"{args.points:,} points, {cores} cores, threshold {floor}", file=sys.stderr)
    vectors, products, truth = planted_vectors(args.points, args.copies, args.seed)
    store, built = build_store(args.work / "duplicates-store", vectors, products)
    print(f"store built: {built}", file=sys.stderr)
    try:
        scan = run_scan(store, book, floor, truth, args.page)
        print(f"scan: {scan}", file=sys.stderr)
        incremental = run_incremental(store, book, floor, vectors, args.batches, args.seed)
        print(f"incremental: {incremental}", file=sys.stderr)
    finally:
        store.close()
        for key in client.scan_iter(f"{PREFIX}:*", count=1000):
            client.delete(key)
    vit = None if args.skip_vit else vit_seconds_per_image(args.work, args.vit_batches)
    recorded = recorded_vit_ingest()
    check_seconds = incremental["check_ms_per_image"] / 1000
    report: dict[str, Any] = {
        "points": args.points,
        "cores": cores,
        "threshold": floor,
        "vectors": "random unit vectors, 512-d, with planted near-copies (not images)",
        "store": built,
        "scan": scan,
        "incremental": incremental,
        "vit_model_alone": vit,
        "vit_ingest_recorded": recorded,
        "check_share_of_model_time": round(check_seconds / vit["seconds_per_image"], 4) if vit else None,
        "check_share_of_recorded_ingest": (
            round(check_seconds * recorded["images_per_second"], 4) if recorded else None
        ),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"duplicates-N{args.points}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwritten to {out.relative_to(ROOT.parent)}")


def print_table(report: dict[str, Any]) -> None:
    scan, incremental, vit = report["scan"], report["incremental"], report["vit_model_alone"]
    recorded = report["vit_ingest_recorded"]
    print(f"\n```sh\npython bench/duplicates.py --points {report['points']}\n```\n")
    print("| measure | value | goal |")
    print("|---|---:|---:|")
    print(f"| points in the store | {report['points']:,} | |")
    print(
        f"| full scan, {report['cores']} cores | **{scan['seconds']:.1f} s** ({scan['points_per_second']:,.0f} "
        f"points/s) | <= 300 s |"
    )
    print(f"| planted copies found by the scan | {scan['planted_found']} of {scan['planted_pairs']} | |")
    print(f"| other pairs reported by the scan | {scan['other_pairs']} | |")
    print(f"| upsert per image (index stage) | {incremental['upsert_ms_per_image']:.2f} ms | |")
    print(f"| duplicate check per image (index stage) | **{incremental['check_ms_per_image']:.2f} ms** | |")
    if vit:
        model_ms = vit["seconds_per_image"] * 1000
        print(f"| ViT-B/32 model alone per image, {vit['threads']} threads | {model_ms:.0f} ms | |")
        print(f"| check / model time (an upper bound of its share of ingestion) | **{report['check_share_of_model_time']:.2%}** | <= 10% |")  # noqa: E501
    if recorded:
        print(
            f"| check / recorded ViT-B/32 ingestion ({recorded['images_per_second']} images/s) | "
            f"**{report['check_share_of_recorded_ingest']:.2%}** | <= 10% |"
        )


if __name__ == "__main__":
    main()
