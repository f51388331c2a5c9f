"""The CLIP text model wrapper (lookalike.worker.text) against the tiny text model (lookalike.testing.tiny_model)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lookalike.config.settings import Settings
from lookalike.testing.tiny_model import build_tiny_text_model, tiny_text_direction
from lookalike.worker.model import ModelSpec, ModelUnavailable
from lookalike.worker.text import TextEmbedder

TEXT_MODEL = "Qdrant/clip-ViT-B-32-text"


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_text_model(tmp_path_factory.mktemp("text-model"))


@pytest.fixture(scope="module")
def embedder(text_dir: Path) -> TextEmbedder:
    return TextEmbedder(ModelSpec(TEXT_MODEL, text_dir, None, 1))


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_loads_from_directory_and_returns_unit_vectors(embedder: TextEmbedder) -> None:
    vectors = embedder.embed(["red kettle", "a blue ceramic mug with a long handle", "lamp"])
    assert vectors.shape == (3, 512)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.dim == 512
    assert embedder.calls == 1 and embedder.items == 3
    assert embedder.embed([]).shape == (0, 512)


def test_vector_is_the_normalised_mean_of_word_directions(embedder: TextEmbedder) -> None:
    expected = _unit(tiny_text_direction("red") + tiny_text_direction("kettle"))
    # padded next to a longer text, and with case and punctuation that the tokenizer drops
    vectors = embedder.embed(["red kettle", "Red, KETTLE!", "a large stainless steel kettle with a red lid"])
    assert float(vectors[0] @ expected) > 0.99
    assert float(vectors[1] @ expected) > 0.99
    assert float(vectors[0] @ _unit(tiny_text_direction("blue") + tiny_text_direction("lamp"))) < 0.5


def test_unknown_words_map_to_unk(embedder: TextEmbedder) -> None:
    (vector,) = embedder.embed(["qwertyuiop"])
    assert float(vector @ tiny_text_direction("[UNK]")) > 0.99


def test_spec_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None, text_model_dir=tmp_path, onnx_threads=2)  # type: ignore[call-arg]
    spec = TextEmbedder.spec_from(settings)
    assert spec.name == TEXT_MODEL and spec.local_dir == tmp_path and spec.threads == 2
    monkeypatch.delenv("LOOKALIKE_TEXT_MODEL_DIR", raising=False)  # the test session sets it for every test
    assert Settings(_env_file=None).text_model_dir is None  # type: ignore[call-arg]


def test_the_text_model_is_loaded_once_per_process(text_dir: Path) -> None:
    spec = ModelSpec(TEXT_MODEL, text_dir, None, 1)
    assert TextEmbedder.shared(spec) is TextEmbedder.shared(spec)


def test_missing_directory_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as info:
        TextEmbedder(ModelSpec(TEXT_MODEL, tmp_path / "nowhere", None, 1))
    assert str(info.value) == f"LOOKALIKE_TEXT_MODEL_DIR={tmp_path / 'nowhere'} does not exist"


@pytest.mark.parametrize("missing", ["model.onnx", "tokenizer.json", "tokenizer_config.json"])
def test_missing_file_is_model_unavailable(tmp_path: Path, missing: str) -> None:
    directory = build_tiny_text_model(tmp_path / "model")
    (directory / missing).unlink()
    with pytest.raises(ModelUnavailable) as info:
        TextEmbedder(ModelSpec(TEXT_MODEL, directory, None, 1))
    assert "\n" not in str(info.value) and missing in str(info.value)


def test_broken_model_file_is_one_line_model_unavailable(tmp_path: Path) -> None:
    directory = build_tiny_text_model(tmp_path / "model")
    (directory / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ModelUnavailable) as info:
        TextEmbedder(ModelSpec(TEXT_MODEL, directory, None, 1))
    assert "\n" not in str(info.value) and "cannot load text model" in str(info.value)


def test_module_entry_builds_a_loadable_text_dir(tmp_path: Path) -> None:
    target = tmp_path / "cli-text"
    done = subprocess.run(
        [sys.executable, "-m", "lookalike.testing.tiny_model", "--text", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (vector,) = TextEmbedder(ModelSpec(TEXT_MODEL, target, None, 1)).embed(["kettle"])
    assert float(vector @ tiny_text_direction("kettle")) > 0.99


def test_module_entry_keeps_vision_default_and_usage(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lookalike.testing.tiny_model", str(tmp_path / "vision")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "vision" / "model.onnx").is_file()
    assert (tmp_path / "vision" / "preprocessor_config.json").is_file()
    usage = subprocess.run(
        [sys.executable, "-m", "lookalike.testing.tiny_model"], capture_output=True, text=True, timeout=120
    )
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")
