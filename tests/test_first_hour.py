"""The first hour of a new user (issue #20), through the installed command and the HTTP API: words without a
text model, results people can read (a match value, a weak-match warning, ranks that follow --offset, names
cut with an ellipsis), the broker named once, a retry that says nobody will take its jobs, one-line errors with
exit 2 for every bad option or port, exit 3 for the same missing model everywhere, help that is whole."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route

from api_support import serving
from conftest import Result, Snapshot, ingested_world, restore_snapshot, run_cli

LONG_NAME = (
    "Jigsaw puzzle of a lighthouse on a rocky coast at dusk, one thousand pieces, with a poster of the "
    "finished picture"
)
PRODUCTS = [
    # id, name, category, price, image seed
    ("kettle", "Stainless electric kettle", "Home & Kitchen | Kettles", "$25.00", 1),
    ("teapot", "Porcelain teapot with infuser", "Home & Kitchen | Teapots", "$40.00", 2),
    ("puzzle", LONG_NAME, "Toys & Games | Puzzles", "$12.50", 3),
    ("drone", "Quadcopter drone with camera", "Toys & Games | Drones", "$99.00", 4),
]


def one_line_error(result: Result) -> str:
    """The single stderr line of a refused command (no usage block, no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "Usage:" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def shop_indexed(
    shared_server: ImageServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Snapshot, dict[str, Any]]:
    """The four products ingested once, by the local workers `ingest --wait` starts (no worker running)."""
    directory = tmp_path_factory.mktemp("first-hour-shop")
    made: dict[str, Any] = {}

    def ingest(environment: dict[str, str]) -> None:
        def cli(*args: str, extra: dict[str, str] | None = None) -> Result:
            return run_cli(list(args), {**environment, **(extra or {})})

        made.update(make_shop(cli, shared_server, directory))

    return ingested_world(directory, ingest), made


@pytest.fixture
def shop(
    env: dict[str, str], redis_client: Any, shop_indexed: tuple[Snapshot, dict[str, Any]]
) -> dict[str, Any]:
    """This test's own copy of the four products' index and state (no worker running)."""
    snapshot, made = shop_indexed
    restore_snapshot(snapshot, redis_client, Path(env["LOOKALIKE_QDRANT_PATH"]))
    return made


def make_shop(
    cli: Any, image_server: ImageServer, tmp_path: Path, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    """The four products, ingested with ``extra`` settings."""
    rows = [
        catalog_row(
            pid,
            name,
            [image_server.add(f"/hour/{pid}.jpg", Route(body=images.product_bytes(seed * 41)))],
            category=category,
            price=price,
            description=f"{name}.",
        )
        for pid, name, category, price, seed in PRODUCTS
    ]
    catalog = write_catalog(tmp_path / "shop.csv", rows)
    done = cli("ingest", str(catalog), "--wait", extra=extra or {})
    assert done.code == 0, done.stderr
    photo = tmp_path / "puzzle.jpg"
    photo.write_bytes(images.resized_copy(images.product_bytes(3 * 41), 0.8, fmt="JPEG", quality=85))
    unlike = tmp_path / "unlike.png"
    unlike.write_bytes(images.product_bytes(999_999))
    return {"catalog": catalog, "photo": photo, "unlike": unlike, "ingest": done}


# ------------------------------------------------------------------------------------------ words, no model
def test_words_without_a_text_model_run_on_keywords_and_say_so(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any
) -> None:
    # The collection is filled with a text model that this machine then loses (queries embed with the
    # collection's own model when the machine still holds it), and the configured one is an empty directory.
    lost = tmp_path / "lost-text-model"
    shutil.copytree(env["LOOKALIKE_TEXT_MODEL_DIR"], lost)
    make_shop(cli, image_server, tmp_path, extra={"LOOKALIKE_TEXT_MODEL_DIR": str(lost)})
    shutil.rmtree(lost)
    no_model = tmp_path / "no-text-model"
    no_model.mkdir()
    missing = {"LOOKALIKE_TEXT_MODEL_DIR": str(no_model)}

    # In this process (no worker running).
    found = cli("search", "--text", "lighthouse", "--facets", "--json", extra=missing)
    assert found.code == 0, found.stderr
    data = found.json()
    assert data["mode"] == "keyword" and "keywords only" in data["note"]
    assert [hit["product_id"] for hit in data["results"]] == ["puzzle"]
    assert data["results"][0]["matched"] == ["keyword"]
    assert "lookalike: searched by keywords only" in found.stderr

    # Through a worker whose embedding processes have no text model: the encode task falls back.
    start_worker(extra=missing)
    through = cli("search", "--text", "lighthouse", "--json", extra=missing)
    assert through.code == 0, through.stderr
    assert [hit["product_id"] for hit in through.json()] == ["puzzle"]
    assert "answering in this process" not in through.stderr and "keywords only" in through.stderr

    # The API says it in its body.
    from lookalike.api import create_app
    from lookalike.app.gateway import Gateway
    from lookalike.config.settings import get_settings

    settings = get_settings()
    with serving(create_app(Gateway(settings), settings)) as base:
        body = httpx.post(f"{base}/v1/search", json={"text": "lighthouse"}, timeout=30).json()
    assert body["mode"] == "keyword" and "keywords only" in body["note"], body
    assert body["results"][0]["product_id"] == "puzzle"


# ------------------------------------------------------------------------------------------ results for people
def test_results_show_a_match_value_ranks_from_the_offset_and_names_cut_with_an_ellipsis(
    cli: Any, shop: dict[str, Any]
) -> None:
    photo = str(shop["photo"])
    ranked = cli("search", photo, "-k", "4", "--json")
    assert ranked.code == 0, ranked.stderr
    hits = ranked.json()
    assert hits[0]["product_id"] == "puzzle"
    assert all(0 <= hit["match"] <= 1 for hit in hits) and hits[0]["match"] > 0.9
    assert all("score" in hit for hit in hits), "the raw score stays in the JSON"
    assert "no close match" not in ranked.stderr

    shown = cli("search", photo, "-k", "2", extra={"COLUMNS": "200"})
    assert shown.code == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if "puzzle" in line)
    assert row.split()[0] == "1" and f"{round(hits[0]['match'] * 100)}%" in row
    assert "│ Jigsaw puzzle of a lighthouse on a rocky coast at dusk… │" in row, "cut at a word, with …"
    assert "score" not in shown.stdout

    paged = cli("search", photo, "-k", "2", "--offset", "2", extra={"COLUMNS": "200"})
    ranks = [line.split()[0] for line in paged.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert ranks == ["3", "4"], paged.stdout


def test_a_query_nothing_matches_well_says_so(cli: Any, shop: dict[str, Any]) -> None:
    weak = cli("search", str(shop["unlike"]), "-k", "3", "--facets", "--json")
    assert weak.code == 0, weak.stderr
    data = weak.json()
    assert data["no_close_match"] is True and len(data["results"]) == 3
    assert max(hit["match"] for hit in data["results"]) < 0.5
    assert "lookalike: no close match: the best result matches" in weak.stderr
    close = cli("search", str(shop["photo"]), "--facets", "--json").json()
    assert close["no_close_match"] is False


def test_a_run_that_indexed_nothing_shows_no_rate_and_status_fits_80_columns(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path
) -> None:
    gone = [image_server.add(f"/gone/{i}.jpg", Route(status=404)) for i in range(2)]
    catalog = write_catalog(tmp_path / "gone.csv", [catalog_row(f"g{i}", "G", [url]) for i, url in enumerate(gone)])
    nothing = cli("ingest", str(catalog), "--wait")
    assert nothing.code == 1
    done = next(line for line in nothing.stdout.splitlines() if line.startswith("done"))
    assert "0 indexed, 2 failed" in done and "images/s" not in done, done

    status = cli("status", extra={"COLUMNS": "80"})
    assert status.code == 0, status.stderr
    header = next(line for line in status.stdout.splitlines() if line.strip().startswith("run "))
    assert header.split() == ["run", "status", "done", "indexed", "failed", "queued", "img/s", "ETA"], header
    tables = status.stdout.split("model:", 1)[0].splitlines()  # the model's path is a line of its own
    assert all(len(line) <= 80 for line in tables), tables
    run = next(line for line in status.stdout.splitlines() if line.split() and line.split()[0][:8].isdigit())
    assert run.split()[-2:] == ["-", "-"], "no rate and no ETA for a run that indexed nothing"


# ------------------------------------------------------------------------------------------ the broker, retries
def test_every_command_names_its_broker_once_on_stderr(cli: Any, env: dict[str, str]) -> None:
    named = f"lookalike: broker {env['LOOKALIKE_BROKER_URL']} (LOOKALIKE_BROKER_URL)"
    for args in (["status"], ["failures"], ["events", "--rejected"], ["search", "--text", "x", "--mode", "keyword"]):
        result = cli(*args)
        assert result.code == 0, result.stderr
        assert result.stderr.splitlines().count(named) == 1, (args, result.stderr)


def test_a_retry_with_no_worker_says_the_jobs_wait_and_failures_says_where_they_are(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path
) -> None:
    flaky = image_server.add("/flaky.jpg", Route(status=404))
    catalog = write_catalog(tmp_path / "c.csv", [catalog_row("f1", "F", [flaky])])
    assert cli("ingest", str(catalog), "--wait").code == 1
    retried = cli("failures", "--retry")
    assert retried.code == 0, retried.stderr
    assert retried.stdout.startswith("re-enqueued 1 images as run ")
    assert "no worker is running: the 1 images wait in the queue until you start `lookalike worker`" in (
        retried.stderr
    )
    listed = cli("failures")
    assert listed.stdout.strip() == (
        "no failures recorded (1 jobs wait in the fetch queue: no worker is running; start `lookalike worker`)"
    )


# ------------------------------------------------------------------------------------------ refusals
def busy_port() -> socket.socket:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    return holder


def test_serve_refuses_a_bad_port_or_one_in_use_in_one_line_before_serving(
    cli: Any, env: dict[str, str], tmp_path: Path
) -> None:
    too_big = cli("serve", "--port", "99999", timeout=60)
    assert too_big.code == 2 and "--port" in one_line_error(too_big)
    setting = cli("serve", extra={"LOOKALIKE_API_PORT": "99999"}, timeout=60)
    assert setting.code == 2 and "LOOKALIKE_API_PORT" in one_line_error(setting)
    with busy_port() as holder:
        port = str(holder.getsockname()[1])
        in_use = cli("serve", "--port", port, timeout=60)
        assert in_use.code == 2, in_use.stderr
        assert one_line_error(in_use) == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
        assert "serving" not in in_use.stderr
        served = cli("images", "serve", str(tmp_path), "--port", port, timeout=60)
        assert served.code == 2 and "Address already in use" in one_line_error(served)


@pytest.mark.parametrize(
    "args",
    [
        ["search"],
        ["search", "{image}", "--text", "words"],
        ["search", "{image}", "-k", "many"],
        ["search", "--text", "w", "--mode", "fuzzy"],
        ["ingest", "{catalog}", "--fraction", "lots"],
        ["worker", "--concurrency", "x"],
        ["status", "--no-such-option"],
        ["similar"],
        ["images", "serve", "{image}"],
        ["images", "localize", "{catalog}", "{out}", "--limit", "0"],
        ["metrics", "--port", "70000"],
        ["no-such-command"],
    ],
    ids=lambda args: "-".join(a.strip("{}") for a in args),
)
def test_every_bad_option_is_one_line_and_exit_2(
    cli: Any, env: dict[str, str], tmp_path: Path, args: list[str]
) -> None:
    image = tmp_path / "q.jpg"
    image.write_bytes(images.product_bytes(3))
    catalog = write_catalog(tmp_path / "c.csv", [catalog_row("p", "P", ["http://127.0.0.1:9/p.jpg"])])
    values = {"image": image, "catalog": catalog, "out": tmp_path / "out"}
    result = cli(*(a.format(**values) for a in args), timeout=60)
    assert result.code == 2, result.stderr
    one_line_error(result)
    assert result.stdout == ""


def test_a_model_that_cannot_load_is_exit_3_in_every_command(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path
) -> None:
    gone = {"LOOKALIKE_MODEL_DIR": str(tmp_path / "no-such-model")}
    photo = tmp_path / "q.jpg"
    photo.write_bytes(images.product_bytes(5))
    url = image_server.add("/m.jpg", Route(body=images.product_bytes(5)))
    catalog = write_catalog(tmp_path / "c.csv", [catalog_row("m", "M", [url])])
    for args in (["worker"], ["ingest", str(catalog), "--wait"], ["search", str(photo)]):
        result = cli(*args, extra=gone, timeout=120)
        assert result.code == 3, (args, result.stderr)
        assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr


# ------------------------------------------------------------------------------------------ help
def test_help_is_whole_at_80_columns_and_names_what_commands_take(cli: Any, env: dict[str, str]) -> None:
    root = cli("--help", extra={"COLUMNS": "80"})
    commands = root.stdout.split("Commands:", 1)[1].strip().splitlines()
    assert len(commands) >= 15 and all(not line.rstrip().endswith("...") for line in commands), root.stdout
    for args in (["ingest"], ["search"], ["similar"], ["status"], ["reconcile"], ["events"], ["images", "localize"]):
        usage = cli(*args, "--help", extra={"COLUMNS": "80"}).stdout.splitlines()[0]
        assert "{" not in usage, usage
    assert "Usage: lookalike ingest [OPTIONS] CATALOG" in cli("ingest", "--help").stdout
    similar = cli("similar", "--help").stdout
    assert "--facets" not in similar and "PRODUCT_ID" in similar


# ------------------------------------------------------------------------------------------ offline quickstart
README = Path(__file__).resolve().parents[1] / "README.md"
OFFLINE_MARK = "<!-- offline quickstart: tests/test_first_hour.py runs this block as written -->"
SAMPLE_FIRST_PRODUCT = "4c69b61db1fc16e7013b43fc926e502d"  # the sample's first row: a longboard


def offline_quickstart() -> list[str]:
    """The README's offline quickstart: the shell block right after OFFLINE_MARK, as lines."""
    text = README.read_text()
    assert OFFLINE_MARK in text, "the README marks its offline quickstart"
    block = text.split(OFFLINE_MARK, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_offline_quickstart_works_as_written(env: dict[str, str], tmp_path: Path) -> None:
    """Every line of the README's offline quickstart, in a fresh directory, against only this machine: the tiny
    models it writes and the images it serves on 127.0.0.1. Two differences from a new user's machine: the
    install line is skipped (this test runs in an installed venv, whose `lookalike` the lines' `.venv/bin/`
    means), and the broker is the tests' Redis database rather than the embedded one (tested elsewhere)."""
    lines = offline_quickstart()
    assert len(lines) <= 10, "ten lines at most"
    assert lines[0].startswith("python3 -m venv .venv && .venv/bin/pip install"), lines[0]
    bin_dir = str(Path(sys.executable).parent) + "/"
    script = "\n".join(line.replace(".venv/bin/", bin_dir) for line in lines[1:])
    (tmp_path / "examples").symlink_to(Path(__file__).resolve().parents[1] / "examples")
    environment = {
        k: v
        for k, v in {**os.environ, **env}.items()
        if k not in ("LOOKALIKE_MODEL_DIR", "LOOKALIKE_TEXT_MODEL_DIR", "LOOKALIKE_FETCH_ALLOW_NETWORKS")
    }
    done = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n{script}"],
        cwd=tmp_path,
        env={**environment, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ingested = next(line for line in done.stdout.splitlines() if line.startswith("done "))
    assert ingested.startswith("done      139 indexed, 0 failed"), done.stdout
    firsts = [line for line in done.stdout.splitlines() if line.strip().startswith("1 │")]
    assert len(firsts) == 2 and all(SAMPLE_FIRST_PRODUCT in line for line in firsts), done.stdout
    assert "100%" in firsts[0], "a photo of the catalogue finds its product, a full match"


# ------------------------------------------------------------------------------------------ categories
def test_a_category_is_found_as_people_type_it_and_facets_count_the_matches(cli: Any, shop: dict[str, Any]) -> None:
    def found(*args: str) -> list[str]:
        result = cli("search", "--text", "puzzle", "--mode", "keyword", *args, "--json")
        assert result.code == 0, result.stderr
        return [hit["product_id"] for hit in result.json()]

    for typed in ("Toys & Games | Puzzles", "puzzles", "TOYS & GAMES", "toys & games|puzzles"):
        assert found("--category", typed) == ["puzzle"], typed
    assert found("--category", "Puzzles | Toys & Games") == []
    faceted = cli("search", "--text", "puzzle", "--mode", "keyword", "--facets", "--json").json()
    assert faceted["facets"] == {"Toys & Games": 1, "Toys & Games | Puzzles": 1}, "the matches, not the catalogue"
    tree = cli("search", "--text", "puzzle", "--mode", "keyword", "--facets", extra={"COLUMNS": "200"}).stdout
    rows = [line.split("│")[0].rstrip() for line in tree.splitlines() if "│" in line]
    assert rows[-2:] == [" Toys & Games", "   Puzzles"], "the CLI prints the tree, each level indented"
