"""A tiny ONNX model with CLIP ViT-B/32 vision's interface, for tests and benchmarks on machines without
the real weights: input ``pixel_values`` (N, 3, 224, 224) float, output (N, 512).

It average-pools the image to a 3 x 14 x 14 colour layout, centres it per image, and projects it to 512
dimensions with a fixed random matrix: images that look alike get close vectors, a resized or re-encoded
copy lands next to its original, and it costs almost nothing to run. Loaded through fastembed's
``specific_model_path`` exactly as a downloaded model directory is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DIM = 512
POOL = 16  # 224 / 16 = 14 cells per side

PREPROCESSOR_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def build_tiny_model(directory: str | Path, seed: int = 1234) -> Path:
    """Write ``model.onnx`` and ``preprocessor_config.json`` into ``directory`` (created) and return it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cells = 3 * (224 // POOL) ** 2
    rng = np.random.default_rng(seed)
    projection = (rng.standard_normal((cells, DIM)) / np.sqrt(cells)).astype(np.float32)

    nodes = [
        helper.make_node("AveragePool", ["pixel_values"], ["pooled"], kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("ReduceMean", ["flat", "axes"], ["mean"], keepdims=1),
        helper.make_node("Sub", ["flat", "mean"], ["centred"]),
        helper.make_node("MatMul", ["centred", "projection"], ["image_embeds"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_clip_vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", DIM])],
        initializer=[
            numpy_helper.from_array(projection, "projection"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="lookalike-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    return directory
