"""The HTTP API under load: 1, 8 and 32 concurrent clients for 30 s each, image and word queries, against a
store of 100,000 points, beside the same query answered in-process.

    python bench/api.py [--points 100000] [--seconds 30] [--clients 1,8,32] [--vit]
    python bench/api.py --while-ingesting | --attack | --optimize [--vit]   (bench/shoppers.py: shoppers under load)

Runs what a deployment runs: `lookalike worker` (embedding processes that encode queries, the store owner that
searches) and `lookalike serve`, on this machine; the clients are threads with one keep-alive connection each.
With --vit the vision model is CLIP ViT-B/32's graph with random weights (bench/work/vit-fp32, built by
bench/ingest.py --vit or here), so an image query costs what a real one costs; word queries use the tiny text
model (no real-cost text graph is built). Reports req/s, p50 and p99 per kind and concurrency, the errors, the
in-process p50 (measured before the workers start and again after they stop), and what the API adds at one
client: each API query paired with the same query in this process moments before or after it, on a twin of
the store (``paired``: the machine's drift largely cancels). Writes bench/results/api[-vit].json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from common import bench_environment
from shoppers import WORDS, SearchClient

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work"
LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def query_photo() -> bytes:
    from lookalike.testing.images import product_bytes

    return product_bytes(4242, "JPEG", (800, 600))


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def load(port: int, kind: str, clients: int, seconds: float) -> dict[str, Any]:
    photo_body, photo_type = multipart(query_photo())
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        search = SearchClient(port)
        mine: list[float] = []
        n = 0
        while time.monotonic() < deadline:
            if kind == "image":
                body, content_type = photo_body, photo_type
            else:
                body, content_type = WORDS[(index + n) % len(WORDS)], "application/json"
            n += 1
            answered = search.post(body, content_type)
            if answered is not None:
                mine.append(answered)
        search.close()
        with lock:
            latencies.extend(mine)
            errors.extend(search.errors)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    values = np.array(latencies) * 1000 if latencies else np.array([0.0])
    return {
        "kind": kind,
        "clients": clients,
        "requests": len(latencies),
        "errors": len(errors),
        "error_samples": errors[:3],
        "req_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(values, 50)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
    }


def in_process(queries: int) -> dict[str, float]:
    from lookalike.state.search import SearchRequest
    from lookalike.worker import pipeline

    ctx = pipeline.current_context()
    ctx.serve_queries()  # the ONNX threads of the shoppers' encode processes, so both sides run the same model
    result: dict[str, float] = {}
    for kind, request in (
        ("image", SearchRequest(image=query_photo(), k=10)),
        ("text", SearchRequest(text="red kettle", k=10)),
    ):
        pipeline.answer_query(ctx, request)  # warm: models loaded, store open
        samples = []
        for _ in range(queries):
            started = time.perf_counter()
            pipeline.answer_query(ctx, request)
            samples.append(time.perf_counter() - started)
        result[f"{kind}_p50_ms"] = round(float(np.percentile(np.array(samples) * 1000, 50)), 1)
    pipeline.reset_context()
    return result


# A short pause between the two halves of a pair, so that neither starts while the other's processes still
# finish their bookkeeping (long enough for that, short of letting them all go idle).
SETTLE = 0.002


def paired(port: int, kind: str, seconds: float, scratch: Path) -> dict[str, Any]:
    """One client, the same query through the API and in this process in turn, for ``seconds``.

    This machine's speed drifts by a fifth within seconds (a shared virtual CPU: the same ViT-B/32 call took
    41 ms, then 49 ms, in one idle process), more than the API's whole addition; measured in separate phases,
    the in-process and API figures compare two machines. Here each API query has an in-process twin run
    moments before or after it (the order alternates, so neither side is always second): the addition is the
    median of the pairs' differences, and the drift largely cancels. The in-process side answers from its own
    copy of the store (the same points, built the same way), since the store owner holds the served one."""
    from lookalike.state.search import QueryRejected, SearchRequest
    from lookalike.worker import pipeline

    settings = pipeline.current_context().settings.model_copy(update={"qdrant_path": scratch / "qdrant-twin"})
    ctx = pipeline.WorkerContext(settings)
    ctx.serve_queries()
    photo = query_photo()
    photo_body, photo_type = multipart(photo)
    search = SearchClient(port)
    api: list[float] = []
    local: list[float] = []
    errors = search.errors  # the in-process side's refusals are counted with the API's

    def in_this_process(request: SearchRequest) -> float | None:
        started = time.perf_counter()
        try:
            pipeline.answer_query(ctx, request)
        except QueryRejected as exc:
            errors.append(f"in-process: {exc}")
            return None
        return time.perf_counter() - started

    n = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if kind == "image":
                body, content_type, request = photo_body, photo_type, SearchRequest(image=photo, k=10)
            else:
                body = WORDS[n % len(WORDS)]  # the shoppers' word queries, the same text on both sides
                content_type, request = "application/json", SearchRequest(**json.loads(body))
            n += 1
            if n % 2:
                remote = search.post(body, content_type)
                time.sleep(SETTLE)
                here = in_this_process(request)
            else:
                here = in_this_process(request)
                time.sleep(SETTLE)
                remote = search.post(body, content_type)
            time.sleep(SETTLE)
            if remote is not None and here is not None and n > 6:  # the first few warm both sides
                api.append(remote * 1000)
                local.append(here * 1000)
    finally:
        search.close()
        ctx.close()
    if not api:
        return {"kind": kind, "pairs": 0, "errors": len(errors), "error_samples": errors[:5]}
    differences = np.array(api) - np.array(local)
    return {
        "kind": kind,
        "pairs": len(api),
        "errors": len(errors),
        "error_samples": errors[:5],
        "api_p50_ms": round(float(np.percentile(api, 50)), 1),
        "in_process_p50_ms": round(float(np.percentile(local, 50)), 1),
        "adds_p50_ms": round(float(np.percentile(differences, 50)), 1),
        "adds_p25_p75_ms": [round(float(np.percentile(differences, q)), 1) for q in (25, 75)],
    }


def wait_ready(env: dict[str, str], port: int, timeout: float = 180) -> None:
    from lookalike.app.gateway import live_workers
    from lookalike.worker.app import create_app

    app = create_app()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        consumed = {q for qs in live_workers(app, 0.5).values() for q in qs}
        if {"lookalike.encode", "lookalike.query"} <= consumed:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
        time.sleep(0.5)
    raise TimeoutError("the worker or the API did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--vit", action="store_true", help="CLIP ViT-B/32's vision graph at real cost")
    parser.add_argument("--redis-db", type=int, default=14)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--while-ingesting", action="store_true", help="one shopper: idle vs while a catalogue ingests")
    mode.add_argument("--attack", action="store_true", help="trickling image URLs and a burst of 10 MB uploads")
    mode.add_argument("--optimize", action="store_true", help="queries while an optimize is asked for at --points")
    parser.add_argument("--images", type=int, default=1200, help="--while-ingesting: images per catalogue")
    parser.add_argument(
        "--rate", type=float, default=10.0, help="--while-ingesting: the shopper's queries per second (0: back to back)"
    )
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="lookalike-api-bench-"))
    extra = {"LOOKALIKE_QDRANT_PATH": str(scratch / "qdrant")}
    if args.while_ingesting or args.attack or args.optimize:
        # The images (and the attack's slow "public" hosts) are on a local server.
        extra["LOOKALIKE_FETCH_ALLOW_NETWORKS"] = "127.0.0.0/8"
        extra["LOOKALIKE_QUERY_ALLOW_NETWORKS"] = "127.0.0.0/8"
    else:
        extra["LOOKALIKE_QUERY_TIMEOUT"] = "60"  # the shoppers' modes measure the defaults
    if args.vit:
        from lookalike.testing.vit_model import build_vit_model

        vit = WORK / "vit-fp32"
        if not (vit / ".complete").exists():
            build_vit_model(vit)
            (vit / ".complete").write_text("ok")
        os.environ["LOOKALIKE_MODEL_DIR"] = str(vit)
    text_dir = scratch / "text-model"
    from lookalike.testing.tiny_model import build_tiny_text_model

    build_tiny_text_model(text_dir)
    extra["LOOKALIKE_TEXT_MODEL_DIR"] = str(text_dir)
    env, model_kind = bench_environment(scratch, args.redis_db, **extra)
    import redis

    redis.Redis.from_url(env["LOOKALIKE_BROKER_URL"]).flushdb()

    sys.path.insert(0, str(ROOT))
    if args.while_ingesting or args.attack or args.optimize:
        shoppers_under_load(args, env, scratch, "ViT-B/32 graph (random weights)" if args.vit else model_kind)
        return
    from search import build

    from lookalike.worker.store import EdgeStore

    store = EdgeStore(scratch / "qdrant", "products")
    print(f"building {args.points} points ...", file=sys.stderr, flush=True)
    built = build(store, args.points)
    store.close()
    twin = EdgeStore(scratch / "qdrant-twin", "products")  # the in-process side of the paired runs
    build(twin, args.points)
    twin.close()
    report: dict[str, Any] = {
        "points": args.points,
        "model": "ViT-B/32 graph (random weights)" if args.vit else model_kind,
        **built,
    }
    # The in-process query is measured before the workers start and again after they stop (the same store, the
    # same process): the two show how far the machine drifted between phases; the phase-based figure of what
    # the API adds is taken against their mean (the headline figure is the paired one).
    samples = 60 if args.vit else 100
    print("in-process queries ...", file=sys.stderr, flush=True)
    report["in_process_before"] = in_process(samples)
    print(f"in process: {report['in_process_before']}", file=sys.stderr, flush=True)

    port = free_port()
    log = (scratch / "processes.log").open("w")
    worker = subprocess.Popen(
        [LOOKALIKE, "worker", "--loglevel", "WARNING"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    server = subprocess.Popen(
        [LOOKALIKE, "serve", "--port", str(port)],
        env={**env, "LOOKALIKE_LOG_LEVEL": "WARNING"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(env, port)
        runs = []
        for kind in ("image", "text"):
            load(port, kind, 1, 3)  # warm every embedding process
            for clients in (int(c) for c in args.clients.split(",")):
                run = load(port, kind, clients, args.seconds)
                runs.append(run)
                print(
                    f"{kind:5s} {clients:3d} clients: {run['req_per_s']:8.2f} req/s  p50 {run['p50_ms']:8.1f} ms  "
                    f"p99 {run['p99_ms']:8.1f} ms  errors {run['errors']}",
                    flush=True,
                )
        report["runs"] = runs
        report["paired"] = []
        for kind in ("image", "text"):
            pairs = paired(port, kind, args.seconds, scratch)
            report["paired"].append(pairs)
            if not pairs["pairs"]:
                print(f"{kind:5s} paired: no pair answered, errors {pairs['error_samples']}", flush=True)
                continue
            print(
                f"{kind:5s} paired, 1 client: API p50 {pairs['api_p50_ms']:6.1f} ms, in-process p50 "
                f"{pairs['in_process_p50_ms']:6.1f} ms, the API adds {pairs['adds_p50_ms']:5.1f} ms "
                f"(p25-p75 {pairs['adds_p25_p75_ms']}) over {pairs['pairs']} pairs, errors {pairs['errors']}",
                flush=True,
            )
    finally:
        for process in (server, worker):
            process.terminate()
        for process in (server, worker):
            process.wait(60)
    report["in_process_after"] = in_process(samples)
    print(f"in process, after: {report['in_process_after']}", file=sys.stderr, flush=True)
    report["in_process"] = {
        key: round((report["in_process_before"][key] + report["in_process_after"][key]) / 2, 1)
        for key in report["in_process_before"]
    }
    one = {r["kind"]: r for r in report["runs"] if r["clients"] == 1}
    eight = {r["kind"]: r for r in report["runs"] if r["clients"] == 8}
    report["scaling_8_over_1"] = {k: round(eight[k]["req_per_s"] / one[k]["req_per_s"], 2) for k in one if k in eight}
    # Two ways to read what the API adds: the paired runs (the headline: both sides on the same machine moments
    # apart), and the 1-client load run against the mean in-process p50 (phases apart: drift included).
    report["api_adds_p50_ms"] = {pairs["kind"]: pairs.get("adds_p50_ms") for pairs in report["paired"]}
    report["api_adds_p50_ms_phases"] = {
        k: round(one[k]["p50_ms"] - report["in_process"][f"{k}_p50_ms"], 1) for k in one
    }
    (ROOT / "results").mkdir(exist_ok=True)
    name = "api-vit.json" if args.vit else "api.json"
    (ROOT / "results" / name).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def shoppers_under_load(args: argparse.Namespace, env: dict[str, str], scratch: Path, model: str) -> None:
    import shoppers

    if args.while_ingesting:
        name = "shoppers-while-ingesting"
        report = shoppers.while_ingesting(
            env, scratch, images=args.images, seconds=args.seconds, model=model, rate=args.rate
        )
    elif args.attack:
        name = "shoppers-attack"
        from lookalike.config.settings import get_settings, reset_settings

        reset_settings()
        report = shoppers.attack(env, scratch, model=model, query_timeout=get_settings().query_timeout)
    else:
        name = "shoppers-optimize"
        report = shoppers.during_optimize(env, scratch, points=args.points, seconds=args.seconds, model=model)
    shoppers.write_report(f"{name}{'-vit' if args.vit else ''}.json", report)


if __name__ == "__main__":
    main()
