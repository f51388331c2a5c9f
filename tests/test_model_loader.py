"""The one model loader (lookalike.worker.model) as both models use it: the image model (Embedder) and the CLIP
text model (TextEmbedder). Local directories, fastembed's cache, offline behaviour and the per-process cache."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from lookalike.config.settings import Settings
from lookalike.testing.tiny_model import build_tiny_model, build_tiny_text_model
from lookalike.worker.embed import Embedder
from lookalike.worker.model import ModelSpec, ModelUnavailable, OnnxModel
from lookalike.worker.text import TextEmbedder

from conftest import run_cli

IMAGE_MODEL = "Qdrant/clip-ViT-B-32-vision"
TEXT_MODEL = "Qdrant/clip-ViT-B-32-text"
KINDS = {
    "image": (Embedder, IMAGE_MODEL, "LOOKALIKE_MODEL_DIR", build_tiny_model),
    "text": (TextEmbedder, TEXT_MODEL, "LOOKALIKE_TEXT_MODEL_DIR", build_tiny_text_model),
}


def hub_cache(cache: Path, repo: str, model_dir: Path) -> Path:
    """``model_dir`` laid out as huggingface_hub caches a download of ``repo`` (what fastembed reads)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    shutil.copytree(model_dir, folder / "snapshots" / revision)
    return cache


def directory_case(case: str, root: Path, required: tuple[str, ...]) -> tuple[Path, str]:
    """A broken model directory under ``root`` and how the error names what is wrong with it."""
    if case == "missing":
        return root / "nowhere", "does not exist"
    (root / "model.onnx").write_bytes(b"")
    if case == "a file":
        return root / "model.onnx", "is not a directory"
    return root, f"has no {required[1]}"  # holds model.onnx, not the next file its kind needs


@pytest.mark.parametrize("case", ["missing", "a file", "incomplete"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_broken_model_directory_is_one_line_that_says_what_is_wrong(kind: str, case: str, tmp_path: Path) -> None:
    loader, name, variable, _build = KINDS[kind]
    directory, problem = directory_case(case, tmp_path, loader.required_files)
    with pytest.raises(ModelUnavailable) as refused:
        loader(ModelSpec(name, directory, None, 1))
    assert str(refused.value) == f"{variable}={directory} {problem}"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_offline_a_model_missing_from_the_cache_fails_in_seconds_with_one_line(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    loader, name, variable, _build = KINDS[kind]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as refused:
        loader(ModelSpec(name, None, tmp_path / "empty-cache", 1))
    elapsed = time.monotonic() - started
    message = str(refused.value)
    assert "\n" not in message
    assert name in message and "HF_HUB_OFFLINE" in message and variable in message
    assert elapsed < 20, f"took {elapsed:.1f} s: something waited for the network"
    assert "Could not find" not in capfd.readouterr().err, "fastembed's own lines are kept quiet"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_offline_a_model_in_the_cache_loads_from_it(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loader, name, _variable, build = KINDS[kind]
    cache = hub_cache(tmp_path / "cache", name, build(tmp_path / "model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = loader(ModelSpec(name, None, cache, 1))
    assert model.dim == 512
    sample = ["red kettle"] if kind == "text" else [_image()]
    assert model.embed(sample).shape == (1, 512)
    assert (model.calls, model.items) == (1, 1)


def _image() -> object:
    from lookalike.testing.images import product_image

    return product_image(1, (224, 224)).convert("RGB")


def test_each_kind_reads_its_own_settings_and_shares_the_rest(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        model_dir=tmp_path / "image",
        text_model_dir=tmp_path / "text",
        model_cache_dir=tmp_path / "cache",
        onnx_threads=3,
    )
    image, text = Embedder.spec_from(settings), TextEmbedder.spec_from(settings)
    assert (image.name, image.local_dir) == (settings.model, tmp_path / "image")
    assert (text.name, text.local_dir) == (settings.text_model, tmp_path / "text")
    for spec in (image, text):
        assert (spec.cache_dir, spec.threads, spec.providers) == (tmp_path / "cache", 3, ("CPUExecutionProvider",))


def test_each_model_is_loaded_once_per_process_and_kinds_do_not_share_an_entry(tmp_path: Path) -> None:
    image_spec = ModelSpec(IMAGE_MODEL, build_tiny_model(tmp_path / "image"), None, 1)
    first: OnnxModel = Embedder.shared(image_spec)
    assert Embedder.shared(image_spec) is first
    text_spec = ModelSpec(TEXT_MODEL, build_tiny_text_model(tmp_path / "text"), None, 1)
    assert isinstance(TextEmbedder.shared(text_spec), TextEmbedder)
    assert Embedder.shared(image_spec) is first


# Offline: nothing is downloaded. Online with the hub unreachable (a closed local port, so no test ever downloads
# a real model): one attempt, not fastembed's three with 3 + 9 + 27 s of sleep between them.
NO_DOWNLOAD = {
    "offline": ({"HF_HUB_OFFLINE": "1"}, ["error: cannot load model"]),
    "hub unreachable": (
        {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:1"},
        ["is not in the model cache: downloading it", "error: cannot download model"],
    ),
}


@pytest.mark.parametrize("case", sorted(NO_DOWNLOAD))
def test_the_worker_without_the_model_in_its_cache_exits_in_seconds_with_one_line(
    case: str, env: dict[str, str], tmp_path: Path
) -> None:
    variables, expected = NO_DOWNLOAD[case]
    started = time.monotonic()
    done = run_cli(
        ["worker"],
        {**env, "LOOKALIKE_MODEL_DIR": "", "LOOKALIKE_MODEL_CACHE_DIR": str(tmp_path / "empty-cache"), **variables},
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert done.code == 3, "the model is not there: exit 3, as in ingest and search"
    lines = [line for line in done.stderr.splitlines() if IMAGE_MODEL in line]
    assert len(lines) == len(expected), done.stderr
    assert all(words in line for words, line in zip(expected, lines, strict=True)), done.stderr
    assert "LOOKALIKE_MODEL_DIR" in lines[-1] and "HF_HUB_OFFLINE" in lines[-1]
    assert "Traceback" not in done.stderr and "Could not find" not in done.stderr
    assert elapsed < 35, f"took {elapsed:.1f} s: more than one download attempt?"
    assert not (tmp_path / "empty-cache" / "models--Qdrant--clip-ViT-B-32-vision" / "snapshots").exists()


def test_every_session_the_loader_builds_never_spins_and_onnxruntime_is_left_as_it_was(tmp_path: Path) -> None:
    import onnxruntime

    original = onnxruntime.SessionOptions
    for kind, name, build in (
        (Embedder, IMAGE_MODEL, build_tiny_model),
        (TextEmbedder, TEXT_MODEL, build_tiny_text_model),
    ):
        model = kind(ModelSpec(name, build(tmp_path / kind.__name__), None, 2))
        options = model._model.model.model.get_session_options()
        for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
            assert options.get_session_config_entry(key) == "0", (kind, key)
        assert options.intra_op_num_threads == 2
    assert onnxruntime.SessionOptions is original
