"""`lookalike eval` on the shipped sample catalogue, with the tiny test model and with its int8 copy.

    python bench/eval_sample.py [--rows 200] [--sample 100] [--seed 0] [--redis-db 14]

Localizes the first ``--rows`` rows of ``examples/amazon-2020-sample1000.csv`` to a loopback image server (each
image URL's host rewritten; the server makes a distinct synthetic image for each path, see
``lookalike.testing.catalogs.localize_catalog``: nothing is fetched from Amazon), builds the tiny vision and text
models, ingests the catalogue through a real worker, runs `lookalike eval --json`, then quantizes both models
(`lookalike model quantize`), ingests the same catalogue into a second store with the int8 copies and evaluates
again with the same sample and seed. Prints both reports as Markdown tables and writes
bench/results/eval-sample.json. Uses Redis database ``--redis-db`` (flushed).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
SAMPLE = ROOT.parent / "examples" / "amazon-2020-sample1000.csv"
LOOKALIKE = str(Path(sys.executable).with_name("lookalike"))


def lookalike(env: dict[str, str], *args: str, timeout: float = 1800) -> str:
    done = subprocess.run([LOOKALIKE, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"lookalike {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def evaluate_with(env: dict[str, str], catalog: Path, sample: int, seed: int, log: Any) -> dict[str, Any]:
    """Ingest ``catalog`` with the models ``env`` names (a worker started for it), then evaluate."""
    worker = subprocess.Popen([LOOKALIKE, "worker", "--loglevel", "WARNING"], env=env, stdout=log, stderr=log)
    try:
        time.sleep(3)
        ingest = json.loads(lookalike(env, "ingest", str(catalog), "--wait", "--json"))
        print(f"  ingested: {ingest['result']['indexed']} indexed, {ingest['result']['failed']} failed", flush=True)
        return json.loads(lookalike(env, "eval", "--sample", str(sample), "--seed", str(seed), "--json"))
    finally:
        worker.terminate()
        worker.wait(60)


def markdown(reports: dict[str, dict[str, Any]]) -> str:
    names = list(reports)
    first = reports[names[0]]
    lines = [
        "| query image | " + " | ".join(f"{n} recall@1 | {n} recall@5 | {n} MRR" for n in names) + " |",
        "|---|" + "---:|" * (3 * len(names)),
    ]
    rows = [*first["images"]["per_transform"], "overall"]
    for row in rows:
        cells = []
        for name in names:
            data = reports[name]["overall"] if row == "overall" else reports[name]["images"]["per_transform"][row]
            cells += [f"{data['recall@1']:.3f}", f"{data['recall@5']:.3f}", f"{data['mrr']:.3f}"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| words (recall@5) | " + " | ".join(f"{n} keyword | {n} semantic | {n} hybrid" for n in names) + " |",
        "|---|" + "---:|" * (3 * len(names)),
    ]
    for kind in first["words"]["recall@5"]:
        cells = []
        for name in names:
            modes = reports[name]["words"]["recall@5"][kind]
            cells += [f"{modes[m]:.3f}" if modes[m] is not None else "-" for m in ("keyword", "semantic", "hybrid")]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--sample", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--redis-db", type=int, default=14)
    args = parser.parse_args()

    import redis

    from lookalike.testing.catalogs import localize_catalog
    from lookalike.testing.server import ImageServer
    from lookalike.testing.tiny_model import build_tiny_model, build_tiny_text_model

    scratch = Path(tempfile.mkdtemp(prefix="lookalike-eval-sample-"))
    head = scratch / "head.csv"
    with SAMPLE.open(encoding="utf-8") as source:
        reader = csv.DictReader(source)
        rows = [row for _, row in zip(range(args.rows), reader, strict=False)]
        with head.open("w", encoding="utf-8", newline="") as target:
            writer = csv.DictWriter(target, fieldnames=list(reader.fieldnames or []))
            writer.writeheader()
            writer.writerows(rows)
    broker = f"redis://127.0.0.1:6379/{args.redis_db}"
    redis.Redis.from_url(broker).flushdb()
    base = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")},
        "LOOKALIKE_BROKER_URL": broker,
        "LOOKALIKE_EMBEDDED_BROKER": "never",
        "LOOKALIKE_FETCH_ALLOW_NETWORKS": "127.0.0.0/8",
        "LOOKALIKE_LOG_LEVEL": "WARNING",
    }
    fp32 = {
        **base,
        "LOOKALIKE_MODEL_DIR": str(build_tiny_model(scratch / "tiny")),
        "LOOKALIKE_TEXT_MODEL_DIR": str(build_tiny_text_model(scratch / "tiny-text")),
        "LOOKALIKE_QDRANT_PATH": str(scratch / "qdrant-fp32"),
        "LOOKALIKE_KEY_PREFIX": "eval-fp32",
    }
    lookalike(fp32, "model", "quantize", "--out", str(scratch / "int8"))
    int8 = {
        **fp32,
        "LOOKALIKE_MODEL_DIR": str(scratch / "int8" / "vision"),
        "LOOKALIKE_TEXT_MODEL_DIR": str(scratch / "int8" / "text"),
        "LOOKALIKE_QDRANT_PATH": str(scratch / "qdrant-int8"),
        "LOOKALIKE_KEY_PREFIX": "eval-int8",
    }
    reports: dict[str, dict[str, Any]] = {}
    with ImageServer() as server, (scratch / "workers.log").open("w") as log:
        catalog = scratch / "catalog.csv"
        localize_catalog(head, catalog, server)
        for name, env in (("tiny", fp32), ("tiny int8", int8)):
            print(f"{name}: ingest and evaluate ...", flush=True)
            reports[name] = evaluate_with(env, catalog, args.sample, args.seed, log)
    result = {"rows": args.rows, "sample": args.sample, "seed": args.seed, "reports": reports}
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "eval-sample.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(reports))


if __name__ == "__main__":
    main()
