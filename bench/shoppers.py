"""Shoppers under load: the modes of bench/api.py that put the query path beside ingestion, slow URLs, bursts
and an optimize, each in one run against a real `lookalike worker` and `lookalike serve` on this machine.

    python bench/api.py --while-ingesting [--vit] [--images 1200] [--seconds 30] [--rate 10]
    python bench/api.py --attack [--vit]
    python bench/api.py --optimize [--vit] [--points 100000] [--seconds 30]

* ``--while-ingesting``: one shopper (one keep-alive connection, alternating a photo upload and words,
  ``--rate`` queries a second: 10 by default, the issue's storefront client; 0 sends them back to back) on the
  idle system, then a catalogue ingested alone, then a second catalogue of as many new images ingested while
  the shopper queries; catalogue images served with 100 ms latency. Goals: photo p95 while ingesting <= 1.5x
  idle, words <= 2x, no errors, ingestion >= 80% of its rate alone.
* ``--attack``: 24 uploads at once, idle and then while 4 shoppers' image URLs trickle 1 byte/s (the uploads'
  p95 <= 2x idle, the slow ones answered within the query timeout); then 50 concurrent 10 MB uploads (every
  answer 200 or 503, API RSS peak <= 600 MiB, Redis growth <= 64 MiB), with /readyz probed every 100 ms
  throughout (200 within 1 s).
* ``--optimize``: a store of ``--points`` unoptimized points; a shopper queries, an optimize is requested (as
  an ingest does when it ends) and the shopper goes on: p95 <= 200 ms.

Each prints a Markdown table ready for the README ("Shoppers under load") and writes bench/results/.
"""

from __future__ import annotations

import http.client
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))
WORDS = [b'{"text": "red kettle", "k": 10}', b'{"text": "blue jacket", "k": 10}', b'{"text": "wooden chair", "k": 10}']


# ------------------------------------------------------------------------------------------------ plumbing
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SearchClient:
    """One keep-alive connection to the API's ``POST /v1/search``, as a storefront holds one: a request that fails
    or is not answered 200 is counted in ``errors`` (and a broken connection replaced), never raised."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.errors: list[str] = []
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, body: bytes, content_type: str) -> float | None:
        """Seconds until the whole answer was read; None when it was not a 200 (the reason is in ``errors``)."""
        started = time.perf_counter()
        try:
            self.connection.request("POST", "/v1/search", body=body, headers={"Content-Type": content_type})
            response = self.connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.errors.append(repr(exc))
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            return None
        if response.status != 200:
            self.errors.append(f"{response.status} {payload[:120]!r}")
            return None
        return time.perf_counter() - started

    def close(self) -> None:
        self.connection.close()


def multipart(image: bytes) -> tuple[bytes, str]:
    boundary = "lookalike-bench-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n10\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + image + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def query_photo(seed: int = 4242) -> bytes:
    from lookalike.testing.images import product_bytes

    return product_bytes(seed, "JPEG", (800, 600))


def ten_megabyte_photo() -> bytes:
    """A PNG of noise just under LOOKALIKE_QUERY_MAX_BYTES (10 MiB): it does not compress."""
    from PIL import Image

    noise = np.random.default_rng(10).integers(0, 256, (1800, 1800, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def post(port: int, body: bytes, content_type: str, timeout: float = 60) -> tuple[int, float, bytes]:
    """One request on its own connection: (status, seconds, body); status 0 for a connection error."""
    started = time.perf_counter()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        connection.request("POST", "/v1/search", body=body, headers={"Content-Type": content_type})
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        return response.status, time.perf_counter() - started, payload
    except (OSError, http.client.HTTPException) as exc:
        return 0, time.perf_counter() - started, repr(exc).encode()


def p(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values) * 1000, q)), 1) if values else float("nan")


class Shopper(threading.Thread):
    """One shopper on one keep-alive connection, alternating a photo upload and words (or photos only); with
    ``rate``, a query starts every 1/rate seconds (or at once when the previous one took longer), as a storefront
    sends them, rather than back to back."""

    def __init__(self, port: int, *, photos_only: bool = False, rate: float | None = None) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.photos_only = photos_only
        self.interval = 1.0 / rate if rate else 0.0
        self.photo = multipart(query_photo())
        self.samples: dict[str, list[float]] = {"photo": [], "words": []}
        self.errors: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        client = SearchClient(self.port)
        self.errors = client.errors
        n = 0
        next_start = time.perf_counter()
        while not self.stop_event.is_set():
            self.stop_event.wait(max(0.0, next_start - time.perf_counter()))
            next_start = max(next_start + self.interval, time.perf_counter())
            kind = "photo" if self.photos_only or n % 2 == 0 else "words"
            body, content_type = self.photo if kind == "photo" else (WORDS[n % len(WORDS)], "application/json")
            n += 1
            seconds = client.post(body, content_type)
            if seconds is not None:
                self.samples[kind].append(seconds)
        client.close()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(90)

    def summary(self) -> dict[str, Any]:
        return {
            **{f"{kind}_{name}_ms": p(values, q) for kind, values in self.samples.items()
               for name, q in (("p50", 50), ("p95", 95))},
            "queries": sum(len(v) for v in self.samples.values()),
            "errors": len(self.errors),
            "error_samples": self.errors[:3],
        }  # fmt: skip


def shop_for(port: int, seconds: float, *, photos_only: bool = False, rate: float | None = None) -> dict[str, Any]:
    shopper = Shopper(port, photos_only=photos_only, rate=rate)
    shopper.start()
    time.sleep(seconds)
    shopper.stop()
    return shopper.summary()


class Deployment:
    """`lookalike worker` (the default pools) and `lookalike serve`, with their output in one log."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.port = free_port()
        self.log_path = log
        self.log = log.open("w")
        self.worker = subprocess.Popen(
            [LOOKALIKE, "worker", "--loglevel", "WARNING"], env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.api = subprocess.Popen(
            [LOOKALIKE, "serve", "--port", str(self.port)],
            env={**env, "LOOKALIKE_LOG_LEVEL": "WARNING"},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        """Every pool consumes its queues and /readyz says 200."""
        from lookalike.app.gateway import live_workers
        from lookalike.state.queues import ALL_QUEUES
        from lookalike.worker.app import create_app

        app = create_app()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not set(ALL_QUEUES) <= {q for qs in live_workers(app, 0.5).values() for q in qs}:
                time.sleep(0.5)
                continue
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the worker or the API did not become ready; see {self.log_path}")

    def stop(self) -> None:
        for process in (self.api, self.worker):
            process.terminate()
        for process in (self.api, self.worker):
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def deployed(env: dict[str, str], scratch: Path) -> Iterator[Deployment]:
    deployment = Deployment(env, scratch / "processes.log")
    try:
        deployment.wait_ready()
        yield deployment
    finally:
        deployment.stop()


def ingest(catalog: Path, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([LOOKALIKE, "ingest", str(catalog), "--wait", "--json"], env=env, capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"lookalike ingest failed: {done.stderr}")
    result = json.loads(done.stdout)["result"]
    return {"images": result["indexed"] + result["failed"], "seconds": result["seconds"],
            "images_per_second": result["images_per_second"]}  # fmt: skip


def catalogues(scratch: Path, count: int) -> tuple[Any, list[Path]]:
    """A seed catalogue (so queries find something) and two catalogues of ``count`` new images each, served."""
    from ingest import generate_images, serve, write_catalog

    sets = [generate_images(60, 31), generate_images(count, 32), generate_images(count, 33)]
    server = serve([path for paths in sets for path in paths], latency_ms=100)  # a CDN's round trip per image
    names = []
    for index, paths in enumerate(sets):
        target = scratch / f"catalog-{index}.csv"
        write_catalog(paths, server.base_url, target)
        # Distinct product ids per catalogue: the second ingest adds products, it does not replace the first's.
        target.write_text(target.read_text().replace("bench-", f"bench{index}-"))
        names.append(target)
    return server, names


def write_report(name: str, report: dict[str, Any]) -> None:
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / name).write_text(json.dumps(report, indent=2) + "\n")


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


# ------------------------------------------------------------------------------------------ while ingesting
def cpu_reading() -> tuple[int, int]:
    """(all, idle) CPU time of the whole machine so far, in clock ticks (Linux's /proc/stat)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]  # idle and iowait


def busy_since(reading: tuple[int, int]) -> float:
    """The share of the machine's CPU time that was busy since ``reading``: what a phase used, all processes."""
    total, idle = cpu_reading()
    return round(1 - (idle - reading[1]) / max(1, total - reading[0]), 3)


def while_ingesting(
    env: dict[str, str], scratch: Path, *, images: int, seconds: float, model: str, rate: float
) -> dict[str, Any]:
    server, (seed, first, second) = catalogues(scratch, images)
    try:
        with deployed(env, scratch) as deployment:
            ingest(seed, env)
            shop_for(deployment.port, 3)  # warm: models loaded in every process, connections open
            print("idle shopper ...", file=sys.stderr, flush=True)
            started = cpu_reading()
            idle = shop_for(deployment.port, seconds, rate=rate)
            machine = {"shopper_alone": busy_since(started)}
            print("ingestion alone ...", file=sys.stderr, flush=True)
            started = cpu_reading()
            alone = ingest(first, env)
            machine["ingestion_alone"] = busy_since(started)
            print("ingestion with a shopper ...", file=sys.stderr, flush=True)
            shopper = Shopper(deployment.port, rate=rate)
            started = cpu_reading()
            shopper.start()
            together = ingest(second, env)
            shopper.stop()
            machine["both"] = busy_since(started)
            busy = shopper.summary()
    finally:
        server.stop()
    report = {"model": model, "images_per_catalogue": images, "queries_per_second": rate, "idle": idle,
              "ingest_alone": alone, "while_ingesting": busy, "ingest_with_shopper": together,
              "machine_busy": machine}  # fmt: skip
    photo = busy["photo_p95_ms"] / idle["photo_p95_ms"]
    words = busy["words_p95_ms"] / idle["words_p95_ms"]
    kept = together["images_per_second"] / alone["images_per_second"]
    report["ratios"] = {"photo_p95": round(photo, 2), "words_p95": round(words, 2), "ingestion": round(kept, 2)}
    print(f"\nShoppers while a catalogue ingests ({model}, {images} images per catalogue, one shopper "
          f"alternating a photo upload and words, {rate:g} queries/s; catalogue images served with 100 ms "
          "latency):\n")  # fmt: skip
    print("| | photo p50 | photo p95 | words p50 | words p95 | errors | ingestion |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| idle | {idle['photo_p50_ms']} ms | {idle['photo_p95_ms']} ms | {idle['words_p50_ms']} ms | "
          f"{idle['words_p95_ms']} ms | {idle['errors']} | - |")  # fmt: skip
    print(f"| ingestion alone | - | - | - | - | - | {alone['images_per_second']:.1f} images/s |")
    print(f"| while ingesting | {busy['photo_p50_ms']} ms | {busy['photo_p95_ms']} ms | {busy['words_p50_ms']} ms | "
          f"{busy['words_p95_ms']} ms | {busy['errors']} | {together['images_per_second']:.1f} images/s |")  # fmt: skip
    print(f"| machine busy (all CPUs, /proc/stat) | shopper alone {machine['shopper_alone']:.1%} | | | | | "
          f"ingestion alone {machine['ingestion_alone']:.1%}, both {machine['both']:.1%} |")  # fmt: skip
    print(f"| while / idle | | **{photo:.2f}x** (goal <= 1.5x, {verdict(photo <= 1.5)}) | | "
          f"**{words:.2f}x** (goal <= 2x, {verdict(words <= 2)}) | {verdict(busy['errors'] == 0)} | "
          f"**{kept:.0%}** of alone (goal >= 80%, {verdict(kept >= 0.8)}) |")  # fmt: skip
    return report


# ---------------------------------------------------------------------------------------------------- attack
class Probe(threading.Thread):
    """Samples while something runs: the API's RSS, Redis's used_memory, and /readyz's answer and latency."""

    def __init__(self, deployment: Deployment, broker_url: str) -> None:
        super().__init__(daemon=True)
        import psutil
        import redis

        self.api = psutil.Process(deployment.api.pid)
        self.redis = redis.Redis.from_url(broker_url)
        self.port = deployment.port
        self.redis_before = int(self.redis.info("memory")["used_memory"])
        self.rss_before = self.api.memory_info().rss
        self.rss_peak = self.rss_before
        self.redis_peak = self.redis_before
        self.ready: list[tuple[int, float]] = []
        self.stop_event = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop_event.wait(0.02):
            try:
                self.rss_peak = max(self.rss_peak, self.api.memory_info().rss)
                self.redis_peak = max(self.redis_peak, int(self.redis.info("memory")["used_memory"]))
            except Exception:  # a sample missed is not a failure of the run
                continue

    def run(self) -> None:
        self.sampler.start()
        while not self.stop_event.wait(0.1):
            started = time.perf_counter()
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/readyz")
                status = connection.getresponse().status
                connection.close()
            except (OSError, http.client.HTTPException):
                status = 0
            self.ready.append((status, time.perf_counter() - started))

    def stop(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join(10)
        self.sampler.join(10)
        return {
            "api_rss_before_mib": round(self.rss_before / 2**20, 1),
            "api_rss_peak_mib": round(self.rss_peak / 2**20, 1),
            "redis_growth_mib": round((self.redis_peak - self.redis_before) / 2**20, 1),
            "readyz_probes": len(self.ready),
            "readyz_not_200": sum(1 for status, _ in self.ready if status != 200),
            "readyz_max_ms": round(max((s for _, s in self.ready), default=0) * 1000, 1),
        }


def at_once(port: int, count: int, body: bytes, content_type: str) -> list[tuple[int, float, bytes]]:
    answers: list[tuple[int, float, bytes]] = []
    lock = threading.Lock()
    gate = threading.Barrier(count)

    def one() -> None:
        gate.wait()
        answer = post(port, body, content_type)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return answers


def statuses(answers: list[tuple[int, float, bytes]]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for status, _, _ in answers:
        counted[str(status)] = counted.get(str(status), 0) + 1
    return dict(sorted(counted.items()))


def attack(env: dict[str, str], scratch: Path, *, model: str, query_timeout: float) -> dict[str, Any]:
    from lookalike.testing.server import Route

    server, (seed, _first, _second) = catalogues(scratch, 3)
    slow = [server.add(f"/slow/{i}.jpg", Route(body=query_photo(900 + i), trickle_seconds=120)) for i in range(4)]
    upload, upload_type = multipart(query_photo())
    big, big_type = multipart(ten_megabyte_photo())
    report: dict[str, Any] = {"model": model}
    try:
        with deployed(env, scratch) as deployment:
            ingest(seed, env)
            shop_for(deployment.port, 3, photos_only=True)
            port = deployment.port
            print("24 uploads at once, idle ...", file=sys.stderr, flush=True)
            idle = [a for _ in range(3) for a in at_once(port, 24, upload, upload_type)]

            print("... and while 4 image URLs trickle ...", file=sys.stderr, flush=True)
            probe = Probe(deployment, env["LOOKALIKE_BROKER_URL"])
            probe.start()
            trickled: list[tuple[int, float, bytes]] = []
            trickles = [
                threading.Thread(
                    target=lambda url=url: trickled.append(
                        post(port, json.dumps({"image_url": url}).encode(), "application/json")
                    )
                )
                for url in slow
            ]
            for thread in trickles:
                thread.start()
            time.sleep(0.5)
            attacked = [a for _ in range(3) for a in at_once(port, 24, upload, upload_type)]
            for thread in trickles:
                thread.join(120)
            report["trickle_probe"] = probe.stop()

            print("50 concurrent 10 MB uploads ...", file=sys.stderr, flush=True)
            probe = Probe(deployment, env["LOOKALIKE_BROKER_URL"])
            probe.start()
            burst = at_once(port, 50, big, big_type)
            time.sleep(1.0)
            report["burst_probe"] = probe.stop()
    finally:
        server.stop()
    idle_p95 = p([s for status, s, _ in idle if status == 200], 95)
    attacked_p95 = p([s for status, s, _ in attacked if status == 200], 95)
    report.update({
        "uploads_idle": {"statuses": statuses(idle), "p95_ms": idle_p95},
        "uploads_with_trickles": {"statuses": statuses(attacked), "p95_ms": attacked_p95},
        "trickling_urls": {"statuses": statuses(trickled), "slowest_s": round(max(s for _, s, _ in trickled), 1),
                           "reasons": sorted({json.loads(b or b"{}").get("error", "?") for _, _, b in trickled})},
        "burst_10mb": {"statuses": statuses(burst), "p95_ms": p([s for _, s, _ in burst], 95)},
    })  # fmt: skip
    ratio = attacked_p95 / idle_p95
    burst_ok = set(statuses(burst)) <= {"200", "503"}
    trickle, burst_probe = report["trickle_probe"], report["burst_probe"]
    slowest = report["trickling_urls"]["slowest_s"]
    ready_ok = all(probe["readyz_not_200"] == 0 and probe["readyz_max_ms"] <= 1000 for probe in (trickle, burst_probe))
    print(f"\nShoppers under attack ({model}):\n")
    print("| scenario | answers | p95 | API RSS peak | Redis growth | /readyz |")
    print("|---|---|---:|---:|---:|---|")
    print(f"| 24 uploads at once, idle (x3) | {statuses(idle)} | {idle_p95} ms | - | - | - |")
    print(f"| same, while 4 image URLs trickle 1 byte/s | {statuses(attacked)} | {attacked_p95} ms "
          f"(**{ratio:.2f}x** idle, goal <= 2x, {verdict(ratio <= 2)}) | {trickle['api_rss_peak_mib']} MiB | "
          f"{trickle['redis_growth_mib']} MiB | {trickle['readyz_not_200']} not 200, max "
          f"{trickle['readyz_max_ms']} ms |")  # fmt: skip
    print(f"| the 4 trickling URLs | {statuses(trickled)} {report['trickling_urls']['reasons']} | slowest "
          f"{slowest} s (goal < {query_timeout:g} s, {verdict(slowest < query_timeout)}) | - | - | - |")  # fmt: skip
    print(f"| 50 concurrent 10 MB uploads | {statuses(burst)} ({verdict(burst_ok)}) | {report['burst_10mb']['p95_ms']}"
          f" ms | {burst_probe['api_rss_peak_mib']} MiB (goal <= 600, "
          f"{verdict(burst_probe['api_rss_peak_mib'] <= 600)}) | {burst_probe['redis_growth_mib']} MiB (goal <= 64, "
          f"{verdict(burst_probe['redis_growth_mib'] <= 64)}) | {burst_probe['readyz_not_200']} not 200, max "
          f"{burst_probe['readyz_max_ms']} ms ({verdict(ready_ok)}) |")  # fmt: skip
    return report


# -------------------------------------------------------------------------------------------------- optimize
def during_optimize(env: dict[str, str], scratch: Path, *, points: int, seconds: float, model: str) -> dict[str, Any]:
    from search import build

    from lookalike.app.gateway import Gateway
    from lookalike.config.settings import get_settings
    from lookalike.worker.store import EdgeStore

    env = {**env, "LOOKALIKE_LOG_LEVEL": "INFO"}  # the store owner's "optimize deferred" lines (the API: WARNING)
    store = EdgeStore(Path(env["LOOKALIKE_QDRANT_PATH"]), "products")
    print(f"building {points} points, not optimized ...", file=sys.stderr, flush=True)
    built = build(store, points, optimize=False)
    store.close()
    with deployed(env, scratch) as deployment:
        shopper = Shopper(deployment.port, photos_only=True)
        shopper.start()
        time.sleep(5)  # the shopper is querying: an ingest now ends and asks for an optimize
        shopper.samples["photo"].clear()
        Gateway(get_settings()).optimize()
        time.sleep(seconds)
        shopper.stop()
    result = shopper.summary()
    deferred = deployment.log_path.read_text().count("optimize deferred")
    report = {"model": model, "points": points, **built, "queries_during": result, "optimize_deferred": deferred}
    p95 = result["photo_p95_ms"]
    print(f"\nQueries while an optimize is asked for, {points:,} points ({model}):\n")
    print("| points | queries | photo p50 | photo p95 | errors | the optimize |")
    print("|---:|---:|---:|---:|---:|---|")
    print(
        f"| {points:,} | {result['queries']} | {result['photo_p50_ms']} ms | {p95} ms (goal <= 200, "
        f"{verdict(p95 <= 200)}) | {result['errors']} | deferred {deferred} time(s) while the shopper queried |"
    )
    return report
