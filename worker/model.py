"""One loader for the ONNX models lookalike runs through fastembed: the image model and the CLIP text model.

Shaped like Immich's machine-learning service (an ``InferenceModel`` base plus a model cache): the base
:class:`OnnxModel` owns what every model needs - its :class:`ModelSpec` (name, local directory, cache
directory, threads, providers), the local directory check, the providers check, how the weights are found
(the cache first, one download only when that fails and we are online), the one-line errors, call accounting
and a per-process cache. :mod:`lookalike.worker.embed` and :mod:`lookalike.worker.text` are thin subclasses
that name their fastembed class, their settings and their files.

A model is loaded lazily, once per process, and again if the process turns out to be a fork of the one that
loaded it: an ONNX Runtime session carried across ``fork()`` shares thread pools and locks with its parent and
is not safe to use (:mod:`lookalike.state.process`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from lookalike.config.settings import Settings
from lookalike.state.errors import ModelUnavailable
from lookalike.state.process import process_cache

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how to run it; the key of the per-process cache."""

    name: str
    local_dir: Path | None
    cache_dir: Path | None
    threads: int
    providers: tuple[str, ...] = (CPU,)


def resolve_providers(names: str | Sequence[str]) -> tuple[str, ...]:
    """Provider names (comma-separated or a sequence) checked against this onnxruntime build: a name it does
    not offer is a one-line :class:`ModelUnavailable`, not a stack trace from deep inside fastembed."""
    import onnxruntime

    wanted = tuple(part.strip() for part in (names.split(",") if isinstance(names, str) else names) if part.strip())
    available = onnxruntime.get_available_providers()
    missing = [name for name in wanted if name not in available]
    if missing or not wanted:
        raise ModelUnavailable(
            f"LOOKALIKE_ONNX_PROVIDERS: {', '.join(missing) or 'none named'} not available in this onnxruntime "
            f"(available: {', '.join(available)})"
        )
    return wanted


def offline() -> bool:
    """Whether downloads are off: ``HF_HUB_OFFLINE``, huggingface_hub's own switch, read the way fastembed
    reads it (fastembed then looks in its cache only)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "TRUE", "YES", "ON"}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@contextlib.contextmanager
def _fastembed_quiet() -> Iterator[None]:
    """Silence fastembed's own log lines (loguru) while probing the cache: a miss is not an error there, and
    the caller says in one line what happened."""
    from loguru import logger

    logger.disable("fastembed")
    try:
        yield
    finally:
        logger.enable("fastembed")


# onnxruntime's thread pools spin on their cores between operators by default. In a process serving shoppers
# beside niced ingestion that burns the cycles ingestion was meant to get: measured on this 2-core machine,
# ViT-B/32 on 2 threads, one query every 200 ms: 245 ms of CPU per query spinning, 132 ms not. (With one thread,
# the embedding pools' default, there is no pool to spin.)
NO_SPINNING = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


_PATCHING = threading.Lock()  # two threads loading at once must not restore each other's patch


@contextlib.contextmanager
def _sessions_that_do_not_spin() -> Iterator[None]:
    """While a model loads, every onnxruntime session it builds gets :data:`NO_SPINNING`. fastembed builds its
    ``SessionOptions`` itself and exposes no config entries (only ``enable_cpu_mem_arena``), so its constructor is
    handed options that already carry them."""
    import onnxruntime

    with _PATCHING:
        original = onnxruntime.SessionOptions

        def options() -> Any:
            made = original()
            for key, value in NO_SPINNING.items():
                made.add_session_config_entry(key, value)
            return made

        onnxruntime.SessionOptions = options
        try:
            yield
        finally:
            onnxruntime.SessionOptions = original


class OnnxModel(ABC):
    """One fastembed model built from a :class:`ModelSpec`, with call accounting (calls, items, seconds)."""

    kind: ClassVar[str]  # how messages name it: "model", "text model"
    name_setting: ClassVar[str]  # the Settings fields naming the model and its local directory
    dir_setting: ClassVar[str]
    required_files: ClassVar[tuple[str, ...]]  # what a local directory must hold

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._check_directory()
        providers = resolve_providers(spec.providers)
        self.dim = self._dimension()
        with _sessions_that_do_not_spin():
            self._model = self._load(providers)
        # What onnxruntime actually runs: it may fall back to the CPU when an accelerator fails to start.
        session = getattr(getattr(self._model, "model", None), "model", None)
        self.providers_in_effect: tuple[str, ...] = tuple(session.get_providers()) if session is not None else ()
        self.calls = 0
        self.items = 0
        self.seconds = 0.0

    # -- the subclass's part ----------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def fastembed_class(cls) -> Any:
        """The fastembed class that loads this kind of model (ImageEmbedding, TextEmbedding)."""

    # -- specs and the per-process cache ------------------------------------------------------------------
    @classmethod
    def spec_from(cls, settings: Settings, *, threads: int | None = None) -> ModelSpec:
        """The model as the settings describe it; ``threads`` for the query encoding processes' own count."""
        return ModelSpec(
            getattr(settings, cls.name_setting),
            getattr(settings, cls.dir_setting),
            settings.model_cache_dir,
            threads or settings.effective_onnx_threads,
            settings.onnx_provider_names,
        )

    @classmethod
    def shared(cls, spec: ModelSpec) -> Self:
        """The process's model for ``spec``, loaded on first use (and again after a fork)."""
        return process_cache.get((cls.__name__, spec), lambda: cls(spec))

    @classmethod
    def for_settings(cls, settings: Settings) -> Self:
        return cls.shared(cls.spec_from(settings))

    # -- loading ------------------------------------------------------------------------------------------
    @property
    def _variable(self) -> str:
        return f"LOOKALIKE_{self.dir_setting.upper()}"

    def _check_directory(self) -> None:
        directory = self.spec.local_dir
        if directory is None:
            return
        if not directory.exists():
            raise ModelUnavailable(f"{self._variable}={directory} does not exist")
        if not directory.is_dir():
            raise ModelUnavailable(f"{self._variable}={directory} is not a directory")
        for required in self.required_files:
            if not (directory / required).is_file():
                raise ModelUnavailable(f"{self._variable}={directory} has no {required}")

    def _dimension(self) -> int:
        try:
            return int(self.fastembed_class().get_embedding_size(self.spec.name))
        except Exception as exc:
            raise ModelUnavailable(f"cannot load {self.kind} {self.spec.name}: {one_line(exc)}") from exc

    def _load(self, providers: tuple[str, ...]) -> Any:
        """From the local directory; else from fastembed's cache, and only when it is not there and downloads
        are on (no ``HF_HUB_OFFLINE``), after one download attempt."""
        spec = self.spec
        options = {
            "model_name": spec.name,
            "cache_dir": str(spec.cache_dir) if spec.cache_dir else None,
            "threads": spec.threads,
            "providers": list(providers),
            "specific_model_path": str(spec.local_dir) if spec.local_dir else None,
        }
        if spec.local_dir is not None:
            return self._construct(options)
        try:
            with _fastembed_quiet():
                return self.fastembed_class()(local_files_only=True, **options)
        except Exception as exc:
            if offline():
                raise ModelUnavailable(
                    f"cannot load {self.kind} {spec.name} from the model cache ({one_line(exc)}) and HF_HUB_OFFLINE "
                    f"is set: download it once while online, or set {self._variable} to a local copy"
                ) from exc
        log.info("%s %s is not in the model cache: downloading it", self.kind, spec.name)
        try:
            self._download_once()
        except Exception as exc:
            raise ModelUnavailable(
                f"cannot download {self.kind} {spec.name}: {one_line(exc)} (offline? set HF_HUB_OFFLINE=1 to "
                f"skip the download, download it once while online, or set {self._variable} to a local copy)"
            ) from exc
        return self._construct({**options, "local_files_only": True})

    def _download_once(self) -> None:
        """One download attempt into fastembed's cache. fastembed's own loop tries three times and sleeps 3, 9
        and 27 s, ~40 s before a machine without network hears why; here the hub's own error comes at once."""
        from fastembed.common.utils import define_cache_dir

        loader = self.fastembed_class()
        [model] = [d for d in loader._list_supported_models() if d.model.lower() == self.spec.name.lower()]
        cache = str(define_cache_dir(str(self.spec.cache_dir) if self.spec.cache_dir else None))
        if model.sources.hf:
            files = [model.model_file, *model.additional_files]
            loader.download_files_from_huggingface(model.sources.hf, cache_dir=cache, extra_patterns=files)
        else:
            loader.download_model(model, cache, retries=1)

    def _construct(self, options: dict[str, Any]) -> Any:
        try:
            return self.fastembed_class()(**options)
        except Exception as exc:
            raise ModelUnavailable(f"cannot load {self.kind} {self.spec.name}: {one_line(exc)}") from exc

    # -- running ------------------------------------------------------------------------------------------
    def _run(self, inputs: list[Any]) -> np.ndarray:
        """One model call for the whole list: an (N, dim) float32 array, timed and counted."""
        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        started = time.perf_counter()
        vectors = np.asarray(list(self._model.embed(inputs, batch_size=len(inputs))), dtype=np.float32)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        self.items += len(inputs)
        if vectors.shape != (len(inputs), self.dim):
            raise ModelUnavailable(f"{self.kind} returned shape {vectors.shape}, expected ({len(inputs)}, {self.dim})")
        return vectors
