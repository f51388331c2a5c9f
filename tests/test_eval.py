"""`lookalike eval` on a small real catalogue, through real workers and the installed command."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route
from lookalike.worker.evaluate import TRANSFORMS, short_name, transformed_copies

PRODUCTS = 12
WORDS = ["kettle", "lamp", "teapot", "blanket", "puzzle", "backpack", "helmet", "wallet", "candle", "mirror",
         "drone", "guitar"]  # fmt: skip


def catalog(server: ImageServer, directory: Path) -> Path:
    rows = []
    for i in range(PRODUCTS):
        url = server.add(f"/eval/p{i}.jpg", Route(body=images.product_bytes(700 + i, size=(400, 300))))
        # Names sharing their first words in pairs, so the shortened name cannot always tell them apart.
        name = f"Acme {WORDS[i // 2]} model {WORDS[i]} [bold]deluxe[/bold] edition"
        rows.append(catalog_row(f"p{i:02d}", name, [url]))
    return write_catalog(directory / "catalog.csv", rows)


def test_eval_reports_recall_and_mrr_per_transform_and_for_words_the_same_for_the_same_seed(
    cli, env, server, tmp_path, start_worker
):
    start_worker()
    assert cli("ingest", str(catalog(server, tmp_path)), "--wait").code == 0

    first = cli("eval", "--sample", "8", "--seed", "3", "--json")
    assert first.code == 0, first.stderr
    report = first.json()
    per_transform = report["images"]["per_transform"]
    assert set(per_transform) == {"original", *TRANSFORMS}
    assert report["images"]["queried"] == 8
    for name, data in per_transform.items():
        assert data["queries"] == 8, name
        assert 0 <= data["recall@1"] <= data["recall@5"] <= 1, name
        assert data["recall@1"] <= data["mrr"] <= data["recall@5"], name
    # The catalogue's own image finds its product first; so does a re-encoded copy (the tiny model sees colour
    # layout, which JPEG keeps); overall is the six changes together.
    assert per_transform["original"]["recall@1"] == 1.0
    assert per_transform["jpeg"]["recall@1"] == 1.0
    assert report["overall"]["queries"] == 6 * 8
    assert 0 < report["overall"]["recall@1"] <= 1
    # Words: every full name is found by its keywords; the shortened names are shared by pairs of products.
    words = report["words"]
    assert words["products"] == 8
    assert words["queries"] == {"name": 8, "short_name": 8}
    assert words["recall@5"]["name"]["keyword"] == 1.0
    assert set(words["recall@5"]["short_name"]) == {"keyword", "semantic", "hybrid"}
    assert report["models"]["vision"] and report["collection"] == "products"

    again = cli("eval", "--sample", "8", "--seed", "3", "--json")
    assert again.json() == report  # deterministic for a seed
    other = cli("eval", "--sample", "8", "--seed", "4", "--json").json()
    assert other["images"]["per_transform"]["original"]["queries"] == 8

    table = cli("eval", "--sample", "8", "--seed", "3")
    assert table.code == 0, table.stderr
    for row in ("original", "crop", "scale_down", "jpeg", "brightness_contrast", "rotation", "letterbox", "overall"):
        assert row in table.stdout
    assert "recall@1" in table.stdout and "hybrid" in table.stdout


def test_eval_with_nothing_indexed_is_one_line_and_exit_2(cli, env):
    result = cli("eval")
    assert result.code == 2
    # One error line, after the line naming the broker (every command names it once).
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "error: no indexed image to sample: ingest a catalogue first"
    assert [line for line in lines[:-1] if not line.startswith("lookalike: broker ")] == []
    assert cli("eval", "--sample", "0").code == 2


def test_each_transform_changes_the_image_and_the_same_seed_gives_the_same_copies():
    with Image.open(io.BytesIO(images.product_bytes(5, size=(300, 200)))) as opened:
        image = opened.convert("RGB")
    first = transformed_copies(image, random.Random("7"))
    assert transformed_copies(image, random.Random("7")) == first
    assert transformed_copies(image, random.Random("8")) != first
    assert len(set(first.values())) == len(first) == 1 + len(TRANSFORMS)
    sizes = {name: Image.open(io.BytesIO(data)).size for name, data in first.items()}
    assert sizes["original"] == (300, 200)
    assert sizes["crop"][0] < 300 and sizes["crop"][1] < 200
    assert sizes["scale_down"][0] <= 120
    assert sizes["letterbox"][1] > 200  # bars above and below
    assert len(first["jpeg"]) < len(first["original"])
    assert short_name("Acme kettle model lamp edition") == "Acme kettle model"
    assert short_name("Acme kettle") is None
