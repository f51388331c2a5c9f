"""The model side of issue #13: the ViT-B/32-shaped benchmark graph, int8 quantization of a model directory,
comparing two models on the same images, and the ONNX providers and threads the workers run with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lookalike.config.cpus import cgroup_cpu_quota, usable_cpus
from lookalike.config.settings import Settings
from lookalike.testing.images import encode, product_image
from lookalike.testing.tiny_model import build_tiny_model
from lookalike.testing.vit_model import build_vit_model, vit_macs_per_image
from lookalike.worker.compare import compare_models, compare_vectors, decode_sample
from lookalike.worker.decode import ImageRejected, fit_to_edge
from lookalike.worker.embed import Embedder, onnx_runtime_in_effect
from lookalike.worker.model import ModelSpec, ModelUnavailable, resolve_providers
from lookalike.worker.quantize import QuantizeError, measure_rate, model_kind, quantize_model_dir

from conftest import run_cli

TEXT_VOCABULARY = 1000
TOKENIZER_FILES = {
    "tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}',
    "tokenizer_config.json": '{"model_max_length": 77}',
    "special_tokens_map.json": '{"eos_token": "<|endoftext|>"}',
    "config.json": '{"projection_dim": 512}',
}


# ------------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    tiny = build_tiny_model(root / "tiny")
    return {"tiny": tiny, "tiny_int8": quantize_model_dir(tiny, root / "tiny-int8").output}


@pytest.fixture(scope="module")
def sample() -> list:
    """40 product-like images at model size, as the pipeline hands them to the model."""
    return [fit_to_edge(product_image(500 + i, (320, 280)).convert("RGB"), 224) for i in range(40)]


def embedder_for(directory: Path) -> Embedder:
    return Embedder(ModelSpec("Qdrant/clip-ViT-B-32-vision", directory, None, 1))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def build_tiny_text_model(directory: Path, seed: int = 5) -> Path:
    """A CLIP-text-shaped graph: input_ids + attention_mask (N, 77) int64 -> (N, 512), a masked mean of token
    embeddings projected to 512, with tokenizer-like files beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((TEXT_VOCABULARY, 64)).astype(np.float32)
    projection = (rng.standard_normal((64, 512)) / 8).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["token_table", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),
        helper.make_node("Mul", ["tokens", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "one"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "one"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["mean"]),
        helper.make_node("MatMul", ["mean", "projection"], ["text_embeds"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_clip_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 77]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", 77]),
        ],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", 512])],
        initializer=[
            numpy_helper.from_array(table, "token_table"),
            numpy_helper.from_array(projection, "projection"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "last"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))
    for name, text in TOKENIZER_FILES.items():
        (directory / name).write_text(text)
    return directory


def run_text(model_path: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


# -------------------------------------------------------------------------------------- the benchmark graph
def test_the_vit_graph_has_clip_vision_layers_and_interface(tmp_path: Path) -> None:
    directory = build_vit_model(tmp_path / "vit", layers=2)
    model = onnx.load(str(directory / "model.onnx"))
    shapes = [tuple(init.dims) for init in model.graph.initializer]
    assert shapes.count((768, 768)) == 4 * 2  # q, k, v, out per block
    assert shapes.count((768, 3072)) == 2 and shapes.count((3072, 768)) == 2
    assert (768, 3, 32, 32) in shapes and (50, 768) in shapes and (768, 512) in shapes
    assert [i.name for i in model.graph.input] == ["pixel_values"]
    assert [o.name for o in model.graph.output] == ["image_embeds"]
    assert sorted(p.name for p in directory.iterdir()) == ["model.onnx", "preprocessor_config.json"]
    # ViT-B/32 is quoted at 4.4 GFLOPs (multiply-adds) an image.
    assert 4.3e9 < vit_macs_per_image() < 4.5e9


def test_the_vit_graph_is_built_from_the_command_line_and_loads_through_the_embedder(tmp_path: Path, sample) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lookalike.testing.vit_model", str(tmp_path / "vit"), "--layers", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "multiply-adds an image" in done.stdout
    vectors = embedder_for(tmp_path / "vit").embed(sample[:3])
    assert vectors.shape == (3, 512)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------------------- quantization
def test_a_quantized_image_model_directory_loads_through_the_embedder_with_close_vectors(models, sample) -> None:
    source, quantized = models["tiny"], models["tiny_int8"]
    assert sorted(p.name for p in quantized.iterdir()) == ["model.onnx", "preprocessor_config.json"]
    assert (quantized / "preprocessor_config.json").read_bytes() == (source / "preprocessor_config.json").read_bytes()
    original, copy = embedder_for(source).embed(sample), embedder_for(quantized).embed(sample)
    assert copy.shape == (len(sample), 512)
    assert np.allclose(np.linalg.norm(copy, axis=1), 1.0, atol=1e-5)
    # Measured 0.9999 mean on these images; int8 weights of a float model are never bit-identical.
    assert cosines(original, copy).min() > 0.999
    assert not np.array_equal(original, copy)


def test_the_quantize_report_gives_both_sizes_and_both_rates(tmp_path: Path, models) -> None:
    report = quantize_model_dir(models["tiny"], tmp_path / "again", batch=4, repeats=1)
    assert report.kind == "image" and report.unit == "images/s" and report.weight_type == "qint8"
    assert report.bytes_before == (models["tiny"] / "model.onnx").stat().st_size
    assert report.bytes_after == (tmp_path / "again" / "model.onnx").stat().st_size
    assert report.size_ratio > 3.5  # float32 -> int8 weights, the graph itself is a few hundred bytes
    assert report.rate_before > 0 and report.rate_after > 0 and report.speedup > 0


def test_a_text_model_is_recognised_by_its_inputs_and_its_tokenizer_files_are_copied(tmp_path: Path) -> None:
    source = build_tiny_text_model(tmp_path / "text")
    assert model_kind(source / "model.onnx") == "text"
    report = quantize_model_dir(source, tmp_path / "text-int8", batch=4, repeats=1)
    assert report.kind == "text" and report.unit == "texts/s"
    assert report.rate_before > 0 and report.rate_after > 0
    assert report.size_ratio > 3.5
    for name in TOKENIZER_FILES:
        assert (report.output / name).read_bytes() == (source / name).read_bytes()
    rng = np.random.default_rng(3)
    ids = rng.integers(1, TEXT_VOCABULARY, size=(16, 77)).astype(np.int64)
    mask = (np.arange(77)[None, :] < rng.integers(3, 77, size=(16, 1))).astype(np.int64)
    before = run_text(source / "model.onnx", ids, mask)
    after = run_text(report.output / "model.onnx", ids, mask)
    assert after.shape == (16, 512)
    assert cosines(before, after).min() > 0.99


def test_a_directory_that_is_not_a_known_model_is_refused_clearly(tmp_path: Path, models) -> None:
    with pytest.raises(QuantizeError, match=r"has no model\.onnx"):
        quantize_model_dir(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(QuantizeError, match="its own directory"):
        quantize_model_dir(models["tiny"], models["tiny"])
    odd = tmp_path / "odd"
    odd.mkdir()
    graph = helper.make_graph(
        [helper.make_node("Identity", ["audio"], ["out"])],
        "odd",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(odd / "model.onnx"))
    with pytest.raises(QuantizeError, match="neither pixel_values"):
        quantize_model_dir(odd, tmp_path / "odd-int8")


def test_measured_rates_are_inputs_per_second(models) -> None:
    assert measure_rate(models["tiny"] / "model.onnx", batch=4, repeats=1) > 10


# ---------------------------------------------------------------------------------------------- compare
def test_a_model_compared_with_itself_agrees_completely(models, sample) -> None:
    report = compare_models(models["tiny"], models["tiny"], sample)
    assert report.images == 40 and report.k == 10
    assert report.cosine_mean == pytest.approx(1.0, abs=1e-6) and report.cosine_p5 == pytest.approx(1.0, abs=1e-6)
    assert report.overlap_mean == 10 and report.overlap_min == 10 and report.overlaps == (10,) * 40


def test_a_model_compared_with_its_quantized_copy_finds_nearly_the_same_neighbours(models, sample) -> None:
    report = compare_models(models["tiny"], models["tiny_int8"], sample)
    assert 0.999 < report.cosine_p5 <= report.cosine_mean < 1.0
    assert report.overlap_mean >= 9.5 and report.overlap_min >= 8


def test_an_unrelated_model_finds_other_neighbours(tmp_path: Path, models, sample) -> None:
    other = build_vit_model(tmp_path / "vit", layers=1)
    report = compare_models(models["tiny"], other, sample)
    # 10 of 39 other images drawn at random would share 2.6 of 10 on average.
    assert report.overlap_mean < 5
    assert report.cosine_mean < 0.5


def test_neighbours_leave_the_image_itself_out_and_k_is_capped_by_the_sample() -> None:
    vectors = np.eye(4, dtype=np.float32) + 0.1
    report = compare_vectors(vectors, vectors, k=10)
    assert report.k == 3 and report.overlaps == (3, 3, 3, 3)
    swapped = compare_vectors(vectors, vectors[[1, 0, 2, 3]], k=1)
    assert swapped.cosine_min < 0.5
    with pytest.raises(ValueError, match="at least 2"):
        compare_models(Path("a"), Path("b"), [product_image(1)])


def test_sample_bytes_are_decoded_the_way_the_pipeline_decodes_them() -> None:
    settings = Settings()
    image = decode_sample(encode(product_image(3, (900, 500)), "PNG"), settings)
    assert image.size == (224, 224) and image.mode == "RGB"
    with pytest.raises(ImageRejected) as refused:
        decode_sample(b"not an image", settings)
    assert refused.value.reason == "not_an_image"


# ------------------------------------------------------------------------------------ providers, threads
def test_an_unavailable_provider_is_one_clear_line(models) -> None:
    with pytest.raises(ModelUnavailable) as refused:
        Embedder(ModelSpec("Qdrant/clip-ViT-B-32-vision", models["tiny"], None, 1, ("NoSuchExecutionProvider",)))
    message = str(refused.value)
    assert "\n" not in message
    assert "LOOKALIKE_ONNX_PROVIDERS: NoSuchExecutionProvider not available" in message
    assert "CPUExecutionProvider" in message  # what is available instead
    assert resolve_providers(" CPUExecutionProvider ") == ("CPUExecutionProvider",)


def test_providers_and_threads_in_effect_follow_the_settings(monkeypatch: pytest.MonkeyPatch, models) -> None:
    cpus = usable_cpus()
    chosen = onnx_runtime_in_effect(Settings(onnx_threads=0, embed_concurrency=0))
    assert chosen.providers == ("CPUExecutionProvider",) and "CPUExecutionProvider" in chosen.available
    assert (chosen.processes, chosen.threads, chosen.threads_chosen, chosen.usable_cpus) == (cpus, 1, True, cpus)
    one_process = Settings(onnx_threads=0, embed_concurrency=1)
    assert onnx_runtime_in_effect(one_process).threads == cpus
    assert onnx_runtime_in_effect(Settings(onnx_threads=3, embed_concurrency=1)).threads == 3
    monkeypatch.setenv("LOOKALIKE_ONNX_PROVIDERS", "CPUExecutionProvider")
    spec = Embedder.spec_from(Settings(model_dir=models["tiny"], embed_concurrency=1))
    assert spec.providers == ("CPUExecutionProvider",) and spec.threads == cpus
    assert Embedder(spec).providers_in_effect == ("CPUExecutionProvider",)
    with pytest.raises(ValueError, match="at least one provider"):
        Settings(onnx_providers=" , ")


def test_the_worker_refuses_to_start_with_an_unavailable_provider(env) -> None:
    done = run_cli(["worker"], {**env, "LOOKALIKE_ONNX_PROVIDERS": "CUDAExecutionProvider"}, timeout=60)
    assert done.code != 0
    assert "CUDAExecutionProvider not available" in done.stderr


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
)
def test_the_cgroup_cpu_quota_caps_the_usable_cpus(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if quota is None else min(affinity, max(1, int(np.ceil(quota))))
    assert usable_cpus(tmp_path) == expected


def test_the_preprocessor_config_of_the_benchmark_graph_is_clips(tmp_path: Path) -> None:
    config = json.loads((build_vit_model(tmp_path / "vit", layers=1) / "preprocessor_config.json").read_text())
    assert config["crop_size"] == {"height": 224, "width": 224}
    assert config["image_mean"][0] == pytest.approx(0.48145466)
