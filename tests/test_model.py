"""The model side of issue #13: the ONNX providers and threads the workers run with."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lookalike.config.cpus import cgroup_cpu_quota, usable_cpus
from lookalike.config.settings import Settings
from lookalike.testing.tiny_model import build_tiny_model
from lookalike.worker.embed import Embedder, ModelSpec, ModelUnavailable, onnx_runtime_in_effect, resolve_providers

from conftest import run_cli


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"tiny": build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")}


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
    spec = ModelSpec.from_settings(Settings(model_dir=models["tiny"], embed_concurrency=1))
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
