"""A model directory -> its int8 copy (onnxruntime's dynamic quantization), with what it saved.

Dynamic quantization stores the weights of every matrix product (and convolution) as 8-bit integers and
quantizes the activations on the fly, batch by batch: no calibration data is needed, which is why it is the
one offered here. On CLIP ViT-B/32's vision graph it makes the model 4x smaller and about 3x faster per CPU
thread, for a mean cosine of ~0.9997 to the float32 vectors (README, "A faster model on CPU").

The output directory holds the quantized ``model.onnx`` and a copy of every other file of the source
(preprocessor config, tokenizer files), so it loads as is through ``LOOKALIKE_MODEL_DIR`` (or the text
model's directory). Needs the ``quantize`` extra (``onnx``).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

MODEL_FILE = "model.onnx"
ModelKind = Literal["image", "text"]
WeightType = Literal["qint8", "quint8"]
# Signed weights: with unsigned activations that is the u8 x s8 product that AVX2 / AVX-512 VNNI / ARM
# (s)dot kernels run natively; u8 x u8 weights take a slower path on x86 (measured in the README).
DEFAULT_WEIGHT_TYPE: WeightType = "qint8"
TEXT_LENGTH = 77  # CLIP's context length: the sequence a text model is measured with when its input is dynamic


class QuantizeError(RuntimeError):
    """The directory cannot be quantized (no model.onnx, an input lookalike does not know, ...)."""


@dataclass(frozen=True)
class QuantizeReport:
    source: Path
    output: Path
    kind: ModelKind
    weight_type: WeightType
    bytes_before: int  # model.onnx (and its external data) of the source
    bytes_after: int
    rate_before: float  # images/s (or texts/s) on one synthetic batch, `threads` ONNX threads
    rate_after: float
    batch: int
    threads: int
    seconds: float  # spent quantizing

    @property
    def unit(self) -> str:
        return "images/s" if self.kind == "image" else "texts/s"

    @property
    def size_ratio(self) -> float:
        """How many times smaller the quantized model is."""
        return self.bytes_before / self.bytes_after if self.bytes_after else 0.0

    @property
    def speedup(self) -> float:
        return self.rate_after / self.rate_before if self.rate_before else 0.0


def model_kind(model_path: Path) -> ModelKind:
    """``image`` for a graph fed ``pixel_values``, ``text`` for one fed ``input_ids`` (+ ``attention_mask``)."""
    names = {value.name for value in _graph_inputs(model_path)}
    if "pixel_values" in names:
        return "image"
    if "input_ids" in names:
        return "text"
    raise QuantizeError(f"{model_path}: inputs {sorted(names)}: neither pixel_values (image) nor input_ids (text)")


def quantize_model_dir(
    src: Path,
    out: Path,
    *,
    weight_type: WeightType = DEFAULT_WEIGHT_TYPE,
    batch: int = 8,
    threads: int = 1,
    repeats: int = 2,
) -> QuantizeReport:
    """Quantize ``src/model.onnx`` into ``out/model.onnx`` (int8 weights, dynamic activations), copy the rest
    of ``src`` beside it, and measure both models on one synthetic batch of ``batch`` inputs.

    ``out`` must not be ``src``; it is created, and files already in it are overwritten.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, out = Path(src), Path(out)
    source_model = src / MODEL_FILE
    if not source_model.is_file():
        raise QuantizeError(f"{src} has no {MODEL_FILE}")
    if out.resolve() == src.resolve():
        raise QuantizeError("the quantized copy needs its own directory")
    kind = model_kind(source_model)
    external = _external_data_files(source_model)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    quantize_dynamic(
        source_model,
        out / MODEL_FILE,
        weight_type=QuantType.QInt8 if weight_type == "qint8" else QuantType.QUInt8,
        # Only products with a constant (weight) side: attention's activation x activation products stay in
        # float, where quantizing both sides on the fly costs more than it saves.
        extra_options={"MatMulConstBOnly": True},
    )
    seconds = time.perf_counter() - started
    for item in src.iterdir():
        if item.name == MODEL_FILE or item.name in external:
            continue
        target = out / item.name
        if item.is_dir():
            shutil.copytree(item, target, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target)
    return QuantizeReport(
        source=src,
        output=out,
        kind=kind,
        weight_type=weight_type,
        bytes_before=_model_bytes(source_model, external),
        bytes_after=_model_bytes(out / MODEL_FILE, _external_data_files(out / MODEL_FILE)),
        rate_before=measure_rate(source_model, batch=batch, threads=threads, repeats=repeats),
        rate_after=measure_rate(out / MODEL_FILE, batch=batch, threads=threads, repeats=repeats),
        batch=batch,
        threads=threads,
        seconds=round(seconds, 3),
    )


def measure_rate(model_path: Path, *, batch: int = 8, threads: int = 1, repeats: int = 2) -> float:
    """Inputs per second through ``model_path`` with onnxruntime directly (CPU, ``threads`` threads): one
    warm-up call, then ``repeats`` timed calls on the same synthetic batch. The inputs are random, which is
    all a dense graph's speed depends on."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    feeds = synthetic_inputs(session.get_inputs(), batch, vocabulary=_vocabulary_size(model_path))
    session.run(None, feeds)
    started = time.perf_counter()
    for _ in range(repeats):
        session.run(None, feeds)
    return round(batch * repeats / (time.perf_counter() - started), 2)


def synthetic_inputs(inputs: list[Any], batch: int, *, vocabulary: int = 1000, seed: int = 0) -> dict[str, Any]:
    """A batch for a session's inputs: normalised-looking pixels for an image model; for a text model token ids
    below ``vocabulary``, a full attention mask, and zeros or positions for the optional id inputs."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, Any] = {}
    for value in inputs:
        shape = [batch if i == 0 else _fixed(dim, TEXT_LENGTH) for i, dim in enumerate(value.shape)]
        dtype = np.int32 if "int32" in value.type else np.int64
        if value.name == "pixel_values":
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
        elif value.name == "input_ids":
            feeds[value.name] = rng.integers(1, max(2, vocabulary), size=shape).astype(dtype)
        elif value.name == "attention_mask":
            feeds[value.name] = np.ones(shape, dtype=dtype)
        elif value.name == "position_ids":
            feeds[value.name] = np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
        elif value.name == "token_type_ids":
            feeds[value.name] = np.zeros(shape, dtype=dtype)
        else:
            raise QuantizeError(f"input {value.name!r}: lookalike does not know what to feed it")
    return feeds


def _fixed(dim: Any, default: int) -> int:
    return dim if isinstance(dim, int) and dim > 0 else default


def _graph_inputs(model_path: Path) -> list[Any]:
    """The graph's real inputs (initializers listed as inputs by old exporters left out)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in weights]


def _vocabulary_size(model_path: Path) -> int:
    """Rows of the embedding table that ``input_ids`` index (a Gather on an initializer), so synthetic ids stay
    in range; 1000 when there is none to be found."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    ids = {"input_ids"}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.input[0] in ids:
            ids.add(node.output[0])
        elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in ids and node.input[0] in shapes:
            return int(shapes[node.input[0]][0])
    return 1000


def _external_data_files(model_path: Path) -> set[str]:
    """Files next to the model that hold its weights (models over 2 GB keep them outside model.onnx)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    names: set[str] = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            names.update(entry.value for entry in init.external_data if entry.key == "location")
    return names


def _model_bytes(model_path: Path, external: set[str]) -> int:
    return model_path.stat().st_size + sum((model_path.parent / name).stat().st_size for name in external)
