"""The first run, as a new user meets it: one message and one exit code when there is no broker, every command
on the same (maybe embedded) broker, `ingest --wait` exit codes that say whether anything was indexed, and
catalogue text that prints as written."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from lookalike.cli import render
from lookalike.state.failures import Failure
from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route
from lookalike.worker import pipeline

from conftest import LOOKALIKE, Result

NOWHERE = "redis://127.0.0.1:1/0"  # nothing listens on port 1


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["failures"],
        ["failures", "--retry"],
        ["search", "{image}"],
        ["events", "--rejected"],
        ["listen", "--stop-when-idle", "1"],
        ["ingest", "{catalog}"],
        ["worker"],
        ["metrics", "--port", "0"],
    ],
    ids=lambda args: "-".join(a for a in args if not a.startswith("{")),
)
def test_every_command_says_there_is_no_broker_in_one_line_and_exits_3(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, args: list[str]
) -> None:
    image = tmp_path / "q.jpg"
    image.write_bytes(images.product_bytes(3))
    catalog = write_catalog(tmp_path / "c.csv", [catalog_row("p", "P", [image_server.add("/p.jpg", Route())])])
    result = cli(*(a.format(image=image, catalog=catalog) for a in args), extra={"LOOKALIKE_BROKER_URL": NOWHERE})
    assert result.code == 3, result.stderr
    assert result.stderr.splitlines() == [
        "error: no broker answers at redis://127.0.0.1:1/0: start Redis (or `docker-compose up -d redis`), or set "
        "LOOKALIKE_BROKER_URL (unset, lookalike runs an embedded one)"
    ]


def test_ingest_wait_exits_1_when_nothing_was_indexed_and_with_strict_when_anything_failed(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any
) -> None:
    start_worker()
    missing = [image_server.add(f"/gone/{i}.jpg", Route(status=404)) for i in range(3)]
    all_bad = write_catalog(tmp_path / "bad.csv", [catalog_row(f"b{i}", "B", [url]) for i, url in enumerate(missing)])
    nothing = cli("ingest", str(all_bad), "--wait")
    assert nothing.code == 1, nothing.stderr
    assert "done      0 indexed, 3 failed" in nothing.stdout
    assert "no image was indexed" in nothing.stderr

    good = image_server.add("/good.jpg", Route(body=images.product_bytes(7)))
    mixed = write_catalog(
        tmp_path / "mixed.csv",
        [catalog_row("g", "G", [good]), catalog_row("m", "M", [image_server.add("/m.jpg", Route(status=404))])],
    )
    assert cli("ingest", str(mixed), "--wait").code == 0
    strict = cli("ingest", str(mixed), "--wait", "--strict", "--full")
    assert strict.code == 1, strict.stderr
    assert "1 image(s) failed" in strict.stderr


def test_catalogue_text_prints_as_written_never_as_markup(cli: Any, env: dict[str, str]) -> None:
    pipeline.current_context().failures.add(
        [
            Failure(
                product_id="Widget [/ 2 pack]",
                image_url="http://img.test/[link=http://evil.test]click[/link].jpg",
                stage="fetch",
                reason="http_404",
                run_id="r1",
            )
        ]
    )
    shown = cli("failures", extra={"COLUMNS": "400"})
    assert shown.code == 0, shown.stderr
    assert "Widget [/ 2 pack]" in shown.stdout
    assert "[link=http://evil.test]click[/link]" in shown.stdout

    console = Console(record=True, force_terminal=True, width=300)
    hit = {"product_id": "p1", "name": "[link=http://evil.test]Widget[/link] [/ 2 pack]", "score": 0.5}
    render.search_results([{**hit, "image_url": "http://img.test/a.jpg"}], console)
    text = console.export_text()
    assert "[link=http://evil.test]Widget[/link] [/ 2 pack]" in text
    assert "\x1b]8;" not in console.export_text(styles=True), "no terminal hyperlink was injected"


def test_every_command_finds_the_embedded_broker_a_running_worker_started(
    env: dict[str, str], image_server: ImageServer, tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # This machine runs a Redis at the default address: point "the default" at a port nobody listens on.
    (hooks / "sitecustomize.py").write_text(
        "import lookalike.app.broker as embedded\nembedded.DEFAULT_BROKER_URL = 'redis://127.0.0.1:1/0'\n"
    )
    environment = {k: v for k, v in {**os.environ, **env}.items() if k != "LOOKALIKE_BROKER_URL"}
    environment.update(
        LOOKALIKE_EMBEDDED_BROKER="auto", LOOKALIKE_EMBEDDED_BROKER_DIR=str(tmp_path / "broker"), PYTHONPATH=str(hooks)
    )

    def run(*args: str) -> Result:
        done = subprocess.run([LOOKALIKE, *args], env=environment, capture_output=True, text=True, timeout=120)
        return Result(done.returncode, done.stdout, done.stderr)

    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [LOOKALIKE, "worker", "--loglevel", "WARNING"], env=environment, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        status = run("status", "--json")
        while time.monotonic() < deadline and not (status.code == 0 and len(status.json()["workers"]) >= 3):
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.5)
            status = run("status", "--json")
        assert status.code == 0 and len(status.json()["workers"]) >= 3, status.stderr
        assert "using the embedded broker" in status.stderr
        catalog = write_catalog(
            tmp_path / "c.csv",
            [catalog_row("e1", "E1", [image_server.add("/e1.jpg", Route(body=images.product_bytes(11)))])],
        )
        ingest = run("ingest", str(catalog), "--wait", "--json")
        assert ingest.code == 0 and ingest.json()["result"]["indexed"] == 1, ingest.stderr
        assert "started local workers" not in ingest.stderr, "the running worker did the work"
        query = tmp_path / "q.jpg"
        query.write_bytes(images.resized_copy(images.product_bytes(11), 0.7))
        found = run("search", str(query), "--json")
        assert found.code == 0 and found.json()[0]["product_id"] == "e1", found.stderr
        assert "answering in this process" not in found.stderr, "the query went to the running worker"
    finally:
        worker.terminate()
        worker.wait(30)
        log.close()
    assert not (tmp_path / "broker" / "broker.url").exists(), "the worker's embedded broker stopped with it"
