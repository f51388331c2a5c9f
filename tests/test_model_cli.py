"""`lookalike model quantize` and `lookalike model compare` as a user runs them, on the tiny models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lookalike.testing import images
from lookalike.testing.catalogs import catalog_row, write_catalog
from lookalike.testing.server import ImageServer, Route


def test_quantize_then_compare_on_the_indexed_catalogue(
    cli: Any, env: dict[str, str], image_server: ImageServer, tmp_path: Path, start_worker: Any
) -> None:
    out = tmp_path / "int8"
    quantized = cli("model", "quantize", "--out", str(out), "--json")
    assert quantized.code == 0, quantized.stderr
    reports = quantized.json()
    assert set(reports) == {"vision", "text"}
    assert reports["vision"]["kind"] == "image" and reports["text"]["kind"] == "text"
    assert (out / "vision" / "model.onnx").is_file() and (out / "text" / "tokenizer.json").is_file()

    start_worker()
    rows = [
        catalog_row(f"m{i}", f"Model {i}", [image_server.add(f"/m/{i}.jpg", Route(body=images.product_bytes(i * 31)))])
        for i in range(12)
    ]
    assert cli("ingest", str(write_catalog(tmp_path / "c.csv", rows)), "--wait").code == 0
    same = cli("model", "compare", env["LOOKALIKE_MODEL_DIR"], env["LOOKALIKE_MODEL_DIR"], "--sample", "12", "--json")
    assert same.code == 0, same.stderr
    assert same.json()["images"] == 12 and same.json()["cosine_mean"] > 0.9999 and same.json()["overlap_min"] == 10
    against_int8 = cli("model", "compare", env["LOOKALIKE_MODEL_DIR"], str(out / "vision"), "--sample", "12")
    assert against_int8.code == 0, against_int8.stderr
    assert "cosine    mean" in against_int8.stdout and "nearest also in B's" in against_int8.stdout

    # The quantized directories load as they are, through the settings a user sets.
    search = cli(
        "search",
        "--text",
        "red kettle",
        "--mode",
        "semantic",
        "--json",
        extra={"LOOKALIKE_MODEL_DIR": str(out / "vision"), "LOOKALIKE_TEXT_MODEL_DIR": str(out / "text")},
    )
    assert search.code == 0, search.stderr


def test_quantize_without_a_model_directory_says_what_to_set(cli: Any, env: dict[str, str]) -> None:
    result = cli("model", "quantize", extra={"LOOKALIKE_MODEL_DIR": "", "LOOKALIKE_TEXT_MODEL_DIR": ""})
    assert result.code == 2 and "LOOKALIKE_MODEL_DIR" in result.stderr
