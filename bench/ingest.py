"""Ingestion throughput: lookalike beside its ceiling and beside the seed notebook's way, on the same images.

    python bench/ingest.py --images 2000 --latency-ms 100 [--workers W]

* ceiling   - the CPU work that cannot be avoided: decode the image files from local disk (the workers' own
              decode, which reads JPEGs at reduced scale) and embed them with fastembed at the workers' batch
              size, one process per core; no network, no queue.
* ceiling_fastembed_decode - the same, but fastembed decodes the full-size files itself (`embed(paths)`), as
              a pipeline without lookalike's decode stage would: the issue's reference ceiling.
* seed      - the seed notebook's way: download one image at a time, one embed call per image (fastembed
              decoding the full-size image), one upsert per image.
* lookalike - `lookalike ingest --wait` end to end through the real Redis, real Celery workers (`lookalike
              worker`, started and warmed first) and the embedded store; stage seconds from the run's
              counters, peak RSS of each worker process.

With --models tiny,fp32,int8 (any of them, in that order or another): the tiny test model, CLIP ViT-B/32's
vision graph with random weights (lookalike.testing.vit_model: the real model's cost) and its int8 copy
(lookalike.worker.quantize), in one run: the ceiling and lookalike for each, with the CPU milliseconds each
spends per image (the ceiling's processes; lookalike's worker processes and Redis) and the issue's goals
(lookalike / ceiling >= 0.85 with the tiny model, >= 0.95 with int8), nothing else; results in
ingest-N<images>-L<latency>-models-<models>.json. --vit is --models fp32,int8 (ingest-N<images>-L<latency>-vit.json).

Images are served by a local HTTP server on 127.0.0.1 that adds --latency-ms to every response (a CDN's
round trip). The tiny test model is used unless LOOKALIKE_MODEL_DIR points at a real one. Prints a table and
writes bench/results/ingest-N<images>-L<latency>.json. Needs the test extras (`pip install -e '.[test]'`).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from common import bench_environment

ROOT = Path(__file__).resolve().parent
WORK = ROOT / "work"
RESULTS = ROOT / "results"
FORMAT_MIX = [("JPEG", 0.7), ("PNG", 0.15), ("WEBP", 0.1), ("GIF", 0.05)]


# ------------------------------------------------------------------------------------------------ inputs
def generate_images(count: int, seed: int) -> list[Path]:
    """Product-like images, 300-1500 px, mixed formats; cached between runs."""
    from lookalike.testing.images import encode, product_image

    folder = WORK / f"images-{count}-{seed}"
    done = folder / ".complete"
    if done.exists():
        return sorted(p for p in folder.iterdir() if p.suffix != "")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = random.Random(seed)
    names, weights = zip(*FORMAT_MIX, strict=True)
    paths = []
    for i in range(count):
        fmt = rng.choices(names, weights)[0]
        width = rng.randint(300, 1500)
        height = int(width * rng.uniform(0.6, 1.4))
        data = encode(
            product_image(seed * 1_000_000 + i, (width, height)),
            fmt,
            **({"quality": 88} if fmt in ("JPEG", "WEBP") else {}),
        )
        path = folder / f"{i:06d}.{fmt.lower()}"
        path.write_bytes(data)
        paths.append(path)
    done.write_text("ok")
    return paths


def image_url(base_url: str, path: Path) -> str:
    """Where ``serve`` serves a generated image: named by its set's folder too, since every set numbers its files
    from 000000 (served by file name alone, a second set's images replaced the first's at the same URLs, and
    its ingest found them in the embedding cache)."""
    return f"{base_url}/img/{path.parent.name}/{path.name}"


def write_catalog(paths: list[Path], base_url: str, target: Path, per_product: int = 3) -> None:
    from lookalike.testing.catalogs import PLACEHOLDER_PATH, catalog_row
    from lookalike.testing.catalogs import write_catalog as write

    placeholder = "https://images-na.ssl-images-amazon.com" + PLACEHOLDER_PATH
    rows = []
    for start in range(0, len(paths), per_product):
        group = paths[start : start + per_product]
        urls = [image_url(base_url, p) for p in group]
        rows.append(catalog_row(f"bench-{start:06d}", f"Bench product {start}", [*urls, placeholder]))
    write(target, rows)


def serve(paths: list[Path], latency_ms: float) -> Any:
    from lookalike.testing.server import ImageServer, Route

    mime = {".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".gif": "image/gif"}
    server = ImageServer(latency_ms=latency_ms).start()
    for path in paths:
        server.add(image_url("", path), Route(body=path.read_bytes(), content_type=mime[path.suffix]))
    return server


# ----------------------------------------------------------------------------------------------- ceiling
def _ceiling_worker(args: tuple[list[str], int, str, str | None, int]) -> tuple[int, float]:
    files, batch, model, model_dir, threads = args
    from lookalike.worker.decode import MODEL_INPUT_EDGE, decode_image
    from lookalike.worker.embed import Embedder
    from lookalike.worker.model import ModelSpec

    embedder = Embedder(ModelSpec(model, Path(model_dir) if model_dir else None, None, threads))
    embedder.embed(
        [decode_image(Path(files[0]).read_bytes(), max_pixels=10**9, formats={"JPEG", "PNG", "WEBP", "GIF"})]
    )
    started = time.perf_counter()
    for start in range(0, len(files), batch):
        prepared = [
            decode_image(
                Path(f).read_bytes(), max_pixels=10**9, formats={"JPEG", "PNG", "WEBP", "GIF"}, edge=MODEL_INPUT_EDGE
            )
            for f in files[start : start + batch]
        ]
        embedder.embed(prepared)
    return len(files), time.perf_counter() - started


def _ceiling_fastembed_worker(args: tuple[list[str], int, str, str | None, int]) -> tuple[int, float]:
    files, batch, model, model_dir, threads = args
    from lookalike.worker.embed import Embedder
    from lookalike.worker.model import ModelSpec

    embedder = Embedder(ModelSpec(model, Path(model_dir) if model_dir else None, None, threads))
    list(embedder._model.embed(files[:1], batch_size=1))
    started = time.perf_counter()
    for start in range(0, len(files), batch):
        list(embedder._model.embed(files[start : start + batch], batch_size=batch))
    return len(files), time.perf_counter() - started


def run_ceiling(
    paths: list[Path], processes: int, settings: Any, fastembed_decode: bool = False, model_dir: Path | None = None
) -> dict[str, Any]:
    shares = [[str(p) for p in paths[i::processes]] for i in range(processes)]
    chosen = model_dir or settings.model_dir
    directory = str(chosen) if chosen else None
    threads = settings.effective_onnx_threads
    jobs = [(share, settings.batch_size, settings.model, directory, threads) for share in shares]
    worker = _ceiling_fastembed_worker if fastembed_decode else _ceiling_worker
    before = psutil.Process().cpu_times()
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        results = pool.map(worker, jobs)
    after = psutil.Process().cpu_times()  # the pool's processes, reaped: their model loads included
    cpu = (after.children_user + after.children_system) - (before.children_user + before.children_system)
    # Every process starts timing after its model is loaded; the slowest one bounds the wall time.
    wall = max(seconds for _, seconds in results)
    images = sum(count for count, _ in results)
    return {
        "images": images,
        "seconds": round(wall, 3),
        "images_per_second": round(images / wall, 2),
        "processes": processes,
        "onnx_threads": threads,
        "cpu_ms_per_image": round(1000 * cpu / images, 2),
    }


# -------------------------------------------------------------------------------------------------- seed
def run_seed(urls: list[str], settings: Any, store_dir: Path) -> dict[str, Any]:
    """Sequential download, one fastembed call per image on the full-size image, one upsert per image."""
    import requests
    from fastembed import ImageEmbedding
    from PIL import Image

    from lookalike.worker.store import EdgeStore, PointRecord

    model = ImageEmbedding(
        model_name=settings.model,
        specific_model_path=str(settings.model_dir) if settings.model_dir else None,
        threads=os.cpu_count(),
    )
    store = EdgeStore(store_dir, "seed")
    store.ensure_collection(ImageEmbedding.get_embedding_size(settings.model))
    session = requests.Session()
    started = time.perf_counter()
    for i, url in enumerate(urls):
        data = session.get(url, timeout=30).content
        image = Image.open(io.BytesIO(data))
        vector = next(iter(model.embed([image], batch_size=1)))
        store.upsert([PointRecord(f"00000000-0000-4000-8000-{i:012d}", vector, {"image_url": url})])
    seconds = time.perf_counter() - started
    store.close()
    return {"images": len(urls), "seconds": round(seconds, 3), "images_per_second": round(len(urls) / seconds, 2)}


# --------------------------------------------------------------------------------------------- lookalike
class RssSampler(threading.Thread):
    """Peak RSS of every process under the worker command, plus snapshots on request."""

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(root_pid)
        self.peak: dict[str, int] = {}
        self.cpu: dict[str, float] = {}
        self.stop_event = threading.Event()

    def current(self) -> dict[str, int]:
        sizes = {}
        try:
            for child in self.root.children(recursive=True):
                try:
                    cmd = " ".join(child.cmdline())
                    role = (
                        "fetch"
                        if "lookalike.fetch" in cmd
                        else "store"
                        if "lookalike.index" in cmd
                        else "encode"
                        if "lookalike.encode" in cmd
                        else "embed"
                    )
                    parent_is_embed = "lookalike.embed" in cmd
                    name = f"{role}:{child.pid}" if not parent_is_embed else f"embed-main:{child.pid}"
                    sizes[name] = child.memory_info().rss
                    times = child.cpu_times()
                    self.cpu[name] = times.user + times.system
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        return sizes

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            for name, rss in self.current().items():
                self.peak[name] = max(self.peak.get(name, 0), rss)


def run_lookalike(catalog: Path, env: dict[str, str], expected: int, workers: int | None) -> dict[str, Any]:
    lookalike = str(Path(sys.executable).with_name("lookalike"))
    args = [lookalike, "worker", "--loglevel", "WARNING"]
    if workers:
        args += ["--concurrency", str(workers)]
    worker = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    sampler = RssSampler(worker.pid)
    try:
        _wait_ready(env)
        sampler.start()
        marks: dict[str, Any] = {}

        def watch() -> None:
            import redis

            client = redis.Redis.from_url(env["LOOKALIKE_BROKER_URL"])
            prefix = env["LOOKALIKE_KEY_PREFIX"]
            while "done" not in marks:
                run_ids = client.zrevrange(f"{prefix}:runs", 0, 0)
                if run_ids:
                    counts = client.hmget(f"{prefix}:run:{run_ids[0].decode()}", "indexed", "failed", "superseded")
                    finished = sum(int(c or 0) for c in counts)
                    if finished >= min(1000, expected) and "rss_at_1000" not in marks:
                        marks["rss_at_1000"] = sampler.current()
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        import redis

        broker = redis.Redis.from_url(env["LOOKALIKE_BROKER_URL"])
        redis_cpu_before = _redis_cpu(broker)
        sampler.current()
        workers_cpu_before = dict(sampler.cpu)  # after start-up and the model loads: the run's own CPU only
        own_cpu_before = sum(psutil.Process().cpu_times()[:2])
        started = time.perf_counter()
        done = subprocess.run(
            [lookalike, "ingest", str(catalog), "--wait", "--json"], env=env, capture_output=True, text=True
        )
        wall = time.perf_counter() - started
        own_cpu = sum(psutil.Process().cpu_times()[:2]) - own_cpu_before
        redis_cpu = _redis_cpu(broker) - redis_cpu_before
        marks["done"] = True
        if done.returncode != 0:
            raise RuntimeError(f"lookalike ingest failed: {done.stderr}")
        summary = json.loads(done.stdout)
        time.sleep(1.0)
        rss_end = sampler.current()
        status = json.loads(
            subprocess.run(
                [lookalike, "status", summary["run_id"], "--json"], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
    finally:
        sampler.stop_event.set()
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, 9)
    run = status["runs"][0]
    result = summary["result"]
    return {
        "images": result["indexed"] + result["failed"],
        "indexed": result["indexed"],
        "failed": result["failed"],
        "seconds": result["seconds"],
        "seconds_with_enqueue": round(wall, 3),
        "images_per_second": result["images_per_second"],
        "embed_calls": result["embed_calls"],
        "stage_seconds": run["stage_seconds"],
        "peak_rss_mb": {k: round(v / 2**20, 1) for k, v in sorted(sampler.peak.items())},
        "cpu_seconds": {k: round(v, 2) for k, v in sorted(sampler.cpu.items())},
        # Every worker process, and Redis: what the pipeline costs per image, beside the ceiling's decode + embed.
        "cpu_ms_per_image": round(
            1000 * (sum(sampler.cpu.values()) - sum(workers_cpu_before.values()) + redis_cpu) / max(1, expected), 2
        ),
        "cpu_seconds_image_server_and_bench": round(own_cpu, 2),
        "cpu_seconds_redis": round(redis_cpu, 2),
        "rss_after_1000_mb": {k: round(v / 2**20, 1) for k, v in sorted(marks.get("rss_at_1000", {}).items())},
        "rss_after_run_mb": {k: round(v / 2**20, 1) for k, v in sorted(rss_end.items())},
    }


def _redis_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _wait_ready(env: dict[str, str], timeout: float = 90) -> None:
    os.environ.update(env)
    from lookalike.config.settings import reset_settings

    reset_settings()
    from lookalike.app.gateway import live_workers
    from lookalike.worker.app import ALL_QUEUES, app

    app.conf.broker_url = env["LOOKALIKE_BROKER_URL"]
    app.conf.result_backend = env["LOOKALIKE_BROKER_URL"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        consumed = {q for qs in live_workers(app, 0.5).values() for q in qs}
        if consumed >= set(ALL_QUEUES):
            return
        time.sleep(0.5)
    raise TimeoutError("lookalike worker did not come up")


# ------------------------------------------------------------------------------------------------- --vit
def vit_models() -> tuple[Path, Path, dict[str, Any]]:
    """The ViT-B/32 graph and its int8 copy, built once and kept in bench/work (335 + 84 MiB)."""
    from dataclasses import asdict

    from lookalike.testing.vit_model import build_vit_model
    from lookalike.worker.quantize import quantize_model_dir

    fp32, int8 = WORK / "vit-fp32", WORK / "vit-int8"
    if not (fp32 / ".complete").exists():
        print("building the ViT-B/32 graph ...", file=sys.stderr)
        build_vit_model(fp32)
        (fp32 / ".complete").write_text("ok")
        shutil.rmtree(int8, ignore_errors=True)
    print("quantizing it (and measuring both on one batch, 1 thread) ...", file=sys.stderr)
    quantized = quantize_model_dir(fp32, int8)
    (int8 / ".complete").unlink(missing_ok=True)  # copied from fp32 with the other files; not a marker there
    summary = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(quantized).items()}
    summary["speedup"] = round(quantized.speedup, 2)
    summary["size_ratio"] = round(quantized.size_ratio, 2)
    return fp32, int8, summary


# The goals: the pipeline's share of its ceiling, per model (fp32 hides the pipeline's cost: no goal).
GOALS = {"tiny": 0.85, "int8": 0.95}
MODELS = ("tiny", "fp32", "int8")


def model_directories(names: list[str], scratch: Path) -> tuple[dict[str, Path], dict[str, Any] | None]:
    """The directory of each model asked for: the tiny test model (built in ``scratch``), the ViT-B/32 graph and
    its int8 copy (built once in bench/work); and the quantization's summary when the ViT-B/32 is among them."""
    directories: dict[str, Path] = {}
    quantized = None
    if "tiny" in names:
        from lookalike.testing.tiny_model import build_tiny_model

        directories["tiny"] = build_tiny_model(scratch / "tiny-model")
    if {"fp32", "int8"} & set(names):
        fp32, int8, quantized = vit_models()
        directories.update(fp32=fp32, int8=int8)
    return {name: directories[name] for name in names}, quantized


def run_models(
    names: list[str], paths: list[Path], catalog: Path, env: dict[str, str], scratch: Path, args: Any, settings: Any
) -> dict[str, Any]:
    """Each model in turn: its ceiling and the whole pipeline, on the same images and catalogue, with the CPU
    seconds each spends per image."""
    import redis

    directories, quantized = model_directories(names, scratch)
    out: dict[str, Any] = {"models": names}
    if quantized is not None:
        out["quantize"] = quantized
    processes = settings.effective_embed_concurrency
    for name, directory in directories.items():
        variant = {**env, "LOOKALIKE_MODEL_DIR": str(directory), "LOOKALIKE_QDRANT_PATH": str(scratch / f"q-{name}")}
        os.environ.update(variant)
        redis.Redis.from_url(env["LOOKALIKE_BROKER_URL"]).flushdb()  # a fresh registry: every image is new
        row: dict[str, Any] = {"model_dir": str(directory)}
        if "ceiling" not in args.skip:
            print(f"{name}: ceiling ...", file=sys.stderr)
            row["ceiling"] = run_ceiling(paths, processes, settings, model_dir=directory)
        if "lookalike" not in args.skip:
            print(f"{name}: lookalike ...", file=sys.stderr)
            row["lookalike"] = run_lookalike(catalog, variant, len(paths), args.workers)
        if "ceiling" in row and "lookalike" in row:
            row["lookalike_over_ceiling"] = round(
                row["lookalike"]["images_per_second"] / row["ceiling"]["images_per_second"], 3
            )
            if name in GOALS:
                row["goal"] = GOALS[name]
                row["goal_met"] = row["lookalike_over_ceiling"] >= GOALS[name]
        out[name] = row
    for way in ("ceiling", "lookalike"):
        if way in out.get("fp32", {}) and way in out.get("int8", {}):
            out[f"int8_over_fp32_{way}"] = round(
                out["int8"][way]["images_per_second"] / out["fp32"][way]["images_per_second"], 2
            )
    return out


def print_models_table(report: dict[str, Any]) -> None:
    runs = report["runs"]
    print(f"\n{report['images']} images, {report['latency_ms']:g} ms latency, {report['cores']} cores")
    if "quantize" in runs:
        q = runs["quantize"]
        print(
            "fp32, int8: CLIP ViT-B/32 vision graph (random weights); int8 copy: "
            f"{q['bytes_before'] / 2**20:.0f} -> {q['bytes_after'] / 2**20:.0f} MiB, "
            f"{q['rate_before']:.1f} -> {q['rate_after']:.1f} images/s on one thread ({q['speedup']:.2f}x)"
        )
    print(
        f"{'model':<6} {'ceiling':>9} {'lookalike':>10} {'ratio':>7} {'goal':>6}  "
        f"{'CPU ms/image: ceiling':>21} {'lookalike':>10}"
    )
    for name in runs["models"]:
        row = runs[name]
        ceiling = row.get("ceiling", {})
        pipeline = row.get("lookalike", {})
        ratio = row.get("lookalike_over_ceiling")
        goal = f"{row['goal']:.0%}" if "goal" in row else "-"
        print(
            f"{name:<6} {ceiling.get('images_per_second', float('nan')):>9.1f} "
            f"{pipeline.get('images_per_second', float('nan')):>10.1f} {format(ratio, '.0%') if ratio else '-':>7} "
            f"{goal:>6}  {ceiling.get('cpu_ms_per_image', float('nan')):>21.1f} "
            f"{pipeline.get('cpu_ms_per_image', float('nan')):>10.1f}"
        )
    for way in ("ceiling", "lookalike"):
        if f"int8_over_fp32_{way}" in runs:
            print(f"int8 / fp32 ({way}) = {runs[f'int8_over_fp32_{way}']:.2f}x")


# ------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--workers", type=int, default=None, help="embedding processes (default: one per core)")
    parser.add_argument("--seed-images", type=int, default=300, help="images the (slow, sequential) seed way runs on")
    parser.add_argument("--skip", action="append", default=[], choices=["ceiling", "seed", "lookalike"])
    parser.add_argument("--redis-db", type=int, default=14)
    parser.add_argument("--random-seed", type=int, default=7)
    parser.add_argument("--tag", default="", help="suffix of the results file (e.g. the settings varied)")
    parser.add_argument(
        "--vit",
        action="store_true",
        help="run with CLIP ViT-B/32's vision graph (random weights), fp32 then its int8 copy: ceiling and lookalike",
    )
    parser.add_argument(
        "--models",
        default="",
        help="comma-separated, of tiny, fp32, int8 (e.g. tiny,fp32,int8): the ceiling and lookalike of each, in one "
        "run and one table, with the issue's goals (--vit is fp32,int8)",
    )
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m] or (["fp32", "int8"] if args.vit else [])
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown model(s) {', '.join(sorted(unknown))}: choose among {', '.join(MODELS)}")

    scratch = Path(tempfile.mkdtemp(prefix="lookalike-bench-", dir=WORK if WORK.exists() else None))
    env, model_kind = bench_environment(
        scratch,
        args.redis_db,
        LOOKALIKE_QDRANT_PATH=str(scratch / "qdrant"),
        LOOKALIKE_FETCH_ALLOW_NETWORKS="127.0.0.0/8",
        LOOKALIKE_EMBED_CACHE_TTL="0",
    )
    import redis

    from lookalike.config.settings import get_settings

    settings = get_settings()
    redis.Redis.from_url(env["LOOKALIKE_BROKER_URL"]).flushdb()

    print(f"generating {args.images} images ...", file=sys.stderr)
    paths = generate_images(args.images, args.random_seed)
    server = serve(paths, args.latency_ms)
    catalog = scratch / "catalog.csv"
    write_catalog(paths, server.base_url, catalog)
    cores = os.cpu_count() or 1
    report: dict[str, Any] = {
        "settings": {
            name: os.environ.get(f"LOOKALIKE_{name.upper()}", str(getattr(settings, name)))
            for name in (
                "batch_size",
                "batch_linger",
                "fetch_batch",
                "fetch_concurrency",
                "fetch_processes",
                "task_events",
            )
        },
        "images": len(paths),
        "latency_ms": args.latency_ms,
        "cores": cores,
        "model": ", ".join(args.models) if args.models else model_kind,
        "batch_size": settings.batch_size,
        "bytes_total": sum(p.stat().st_size for p in paths),
    }
    try:
        if args.models:
            report["runs"] = run_models(args.models, paths, catalog, env, scratch, args, settings)
            return finish(report, args)
        if "ceiling" not in args.skip:
            print("ceiling ...", file=sys.stderr)
            processes = settings.effective_embed_concurrency
            report["ceiling"] = run_ceiling(paths, processes, settings)
            report["ceiling_fastembed_decode"] = run_ceiling(paths, processes, settings, fastembed_decode=True)
        if "seed" not in args.skip:
            sample = paths[: args.seed_images]
            print(f"seed way on {len(sample)} images ...", file=sys.stderr)
            report["seed"] = run_seed([image_url(server.base_url, p) for p in sample], settings, scratch / "seed-store")
        if "lookalike" not in args.skip:
            print("lookalike ...", file=sys.stderr)
            report["lookalike"] = run_lookalike(catalog, env, len(paths), args.workers)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    finish(report, args)


def finish(report: dict[str, Any], args: Any) -> None:
    """Ratios, the table and the JSON file."""
    if "runs" in report:
        print_models_table(report)
        write_results(report, args, "vit" if args.models == ["fp32", "int8"] else "-".join(["models", *args.models]))
        return
    rate = report.get("lookalike", {}).get("images_per_second")
    if rate and "ceiling" in report:
        report["lookalike_over_ceiling"] = round(rate / report["ceiling"]["images_per_second"], 3)
        report["lookalike_over_ceiling_fastembed_decode"] = round(
            rate / report["ceiling_fastembed_decode"]["images_per_second"], 3
        )
    if rate and "seed" in report:
        report["lookalike_over_seed"] = round(rate / report["seed"]["images_per_second"], 2)
    print_table(report)
    write_results(report, args)


def write_results(report: dict[str, Any], args: Any, kind: str = "") -> None:
    RESULTS.mkdir(exist_ok=True)
    suffix = "".join(f"-{part}" for part in (kind, args.tag) if part)
    out = RESULTS / f"ingest-N{args.images}-L{int(args.latency_ms)}{suffix}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {out.relative_to(ROOT.parent)}")


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{report['images']} images, {report['latency_ms']:g} ms latency, {report['cores']} cores, {report['model']}"
    )
    print(f"{'way':<26} {'images/s':>10} {'seconds':>9}  notes")
    for way in ("ceiling", "ceiling_fastembed_decode", "seed", "lookalike"):
        if way not in report:
            continue
        row = report[way]
        notes = ""
        if way == "ceiling":
            notes = f"{row['processes']} processes, lookalike's decode + embed, from disk"
        elif way == "ceiling_fastembed_decode":
            notes = f"{row['processes']} processes, fastembed decodes the full-size files + embed, from disk"
        elif way == "seed":
            notes = f"sequential, on {row['images']} images"
        else:
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in row["stage_seconds"].items())
            notes = f"{row['indexed']} indexed, {row['embed_calls']} embed calls; stage seconds: {stages}"
        print(f"{way:<26} {row['images_per_second']:>10.1f} {row['seconds']:>9.1f}  {notes}")
    if "lookalike_over_ceiling" in report:
        print(f"lookalike / ceiling = {report['lookalike_over_ceiling']:.0%}")
        print(f"lookalike / ceiling_fastembed_decode = {report['lookalike_over_ceiling_fastembed_decode']:.0%}")
    if "lookalike_over_seed" in report:
        print(f"lookalike / seed    = {report['lookalike_over_seed']:.1f}x")
    if "lookalike" in report:
        print("peak RSS (MB):", report["lookalike"]["peak_rss_mb"])
        print("CPU seconds per worker process:", report["lookalike"]["cpu_seconds"])
        print(
            "CPU seconds of the image server (this process):",
            report["lookalike"]["cpu_seconds_image_server_and_bench"],
            "; of Redis:",
            report["lookalike"]["cpu_seconds_redis"],
        )
        print("RSS after 1000 images (MB):", report["lookalike"]["rss_after_1000_mb"])
        print("RSS after the run (MB):", report["lookalike"]["rss_after_run_mb"])


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
