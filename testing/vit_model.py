"""CLIP ViT-B/32's vision graph with random weights, for benchmarks that need the real model's cost.

The tiny test model (:mod:`lookalike.testing.tiny_model`) costs almost nothing, so with it the pipeline's own
overhead dominates every measurement; the real weights cannot be downloaded on the machines the benchmarks
run on. This graph has the real model's layers and shapes, so it costs what the real model costs (~4.4 G
multiply-adds an image, 335 MiB of float32 weights; ~10 images/s per thread on the CI machine's CPU with
onnxruntime) and quantizes the way it does:

    32x32 patch convolution 3 -> 768 (no bias), class token, 50 position embeddings, pre-LayerNorm,
    12 pre-LN transformer blocks (12-head attention 768 wide, MLP 768 -> 3072 -> 768 with quick-GELU),
    post-LayerNorm on the class token, projection 768 -> 512 (no bias).

Input ``pixel_values`` (N, 3, 224, 224) float32, output ``image_embeds`` (N, 512): the same interface and the
same directory (``model.onnx`` + ``preprocessor_config.json``) as the tiny model and as
``Qdrant/clip-ViT-B-32-vision``, loaded through fastembed's ``specific_model_path``. The vectors mean
nothing (random weights): use it for speed and for how closely a quantized copy follows it, never for
search quality.

    python -m lookalike.testing.vit_model DIR [--layers 12]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.testing.tiny_model import PREPROCESSOR_CONFIG

WIDTH = 768
HEADS = 12
MLP = 3072
LAYERS = 12
PATCH = 32
EDGE = 224
TOKENS = (EDGE // PATCH) ** 2 + 1  # 49 patches + the class token
DIM = 512


def vit_macs_per_image(layers: int = LAYERS) -> float:
    """Multiply-adds of one image through the graph (matrix products only; the rest is noise): the figure
    usually quoted as ViT-B/32's "4.4 GFLOPs"."""
    patches = TOKENS - 1
    conv = patches * 3 * PATCH * PATCH * WIDTH
    per_block = TOKENS * (4 * WIDTH * WIDTH + 2 * WIDTH * MLP) + 2 * TOKENS * TOKENS * WIDTH
    return float(conv + layers * per_block + WIDTH * DIM)


def build_vit_model(directory: str | Path, *, layers: int = LAYERS, seed: int = 32) -> Path:
    """Write ``model.onnx`` and ``preprocessor_config.json`` into ``directory`` (created) and return it.

    Weights are drawn like CLIP's initialisation (normal, std 0.02; LayerNorm scale 1, shift 0), so the
    activations stay in the range a trained model's do and quantization errors are of a realistic size.
    ``layers`` below 12 gives a cheaper graph of the same kind, for tests.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    initializers: list[Any] = []
    nodes: list[Any] = []

    def weight(name: str, shape: tuple[int, ...], std: float = 0.02) -> str:
        initializers.append(numpy_helper.from_array((rng.standard_normal(shape) * std).astype(np.float32), name))
        return name

    def const(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def layer_norm(x: str, prefix: str) -> str:
        scale = const(f"{prefix}.weight", np.ones(WIDTH, dtype=np.float32))
        shift = const(f"{prefix}.bias", np.zeros(WIDTH, dtype=np.float32))
        return node("LayerNormalization", [x, scale, shift], f"{prefix}.out", axis=-1, epsilon=1e-5)

    def linear(x: str, prefix: str, fan_in: int, fan_out: int) -> str:
        product = node("MatMul", [x, weight(f"{prefix}.weight", (fan_in, fan_out))], f"{prefix}.matmul")
        return node("Add", [product, const(f"{prefix}.bias", np.zeros(fan_out, dtype=np.float32))], f"{prefix}.out")

    heads_shape = const("heads_shape", np.array([0, TOKENS, HEADS, WIDTH // HEADS], dtype=np.int64))
    tokens_shape = const("tokens_shape", np.array([0, TOKENS, WIDTH], dtype=np.int64))
    scale = const("attention_scale", np.array((WIDTH // HEADS) ** -0.5, dtype=np.float32))
    gelu_factor = const("quick_gelu_factor", np.array(1.702, dtype=np.float32))

    def attention(x: str, prefix: str) -> str:
        def heads(name: str) -> str:
            split = node("Reshape", [linear(x, f"{prefix}.{name}", WIDTH, WIDTH), heads_shape], f"{prefix}.{name}.4d")
            return node("Transpose", [split], f"{prefix}.{name}.heads", perm=[0, 2, 1, 3])

        q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
        k_t = node("Transpose", [k], f"{prefix}.k_t", perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [q, k_t], f"{prefix}.qk"), scale], f"{prefix}.scores")
        weights = node("Softmax", [scores], f"{prefix}.softmax", axis=-1)
        mixed = node(
            "Transpose", [node("MatMul", [weights, v], f"{prefix}.mixed")], f"{prefix}.mixed.t", perm=[0, 2, 1, 3]
        )
        merged = node("Reshape", [mixed, tokens_shape], f"{prefix}.merged")
        return linear(merged, f"{prefix}.out_proj", WIDTH, WIDTH)

    def mlp(x: str, prefix: str) -> str:
        hidden = linear(x, f"{prefix}.fc1", WIDTH, MLP)
        gate = node("Sigmoid", [node("Mul", [hidden, gelu_factor], f"{prefix}.scaled")], f"{prefix}.gate")
        return linear(node("Mul", [hidden, gate], f"{prefix}.quick_gelu"), f"{prefix}.fc2", MLP, WIDTH)

    # Patches -> tokens: (N, 768, 7, 7) -> (N, 49, 768), class token in front, positions added.
    patches = node(
        "Conv",
        ["pixel_values", weight("patch_embedding", (WIDTH, 3, PATCH, PATCH))],
        "patches",
        kernel_shape=[PATCH, PATCH],
        strides=[PATCH, PATCH],
    )
    flat = node("Reshape", [patches, const("patches_shape", np.array([0, WIDTH, TOKENS - 1], dtype=np.int64))], "flat")
    tokens = node("Transpose", [flat], "patch_tokens", perm=[0, 2, 1])
    batch = node("Shape", ["pixel_values"], "batch", start=0, end=1)
    class_shape = node(
        "Concat", [batch, const("one_by_width", np.array([1, WIDTH], dtype=np.int64))], "class_shape", axis=0
    )
    class_token = node("Expand", [weight("class_embedding", (1, 1, WIDTH)), class_shape], "class_tokens")
    x = node("Concat", [class_token, tokens], "tokens", axis=1)
    x = node("Add", [x, weight("position_embedding", (TOKENS, WIDTH))], "embedded")
    x = layer_norm(x, "pre_layrnorm")
    for i in range(layers):
        prefix = f"layers.{i}"
        x = node("Add", [x, attention(layer_norm(x, f"{prefix}.layer_norm1"), f"{prefix}.self_attn")], f"{prefix}.res1")
        x = node("Add", [x, mlp(layer_norm(x, f"{prefix}.layer_norm2"), f"{prefix}.mlp")], f"{prefix}.res2")
    first = node(
        "Gather", [x, const("class_index", np.array(0, dtype=np.int64))], "pooled", axis=1
    )  # (N, 768): the class token
    pooled = layer_norm(first, "post_layernorm")
    nodes.append(helper.make_node("MatMul", [pooled, weight("visual_projection", (WIDTH, DIM))], ["image_embeds"]))

    graph = helper.make_graph(
        nodes,
        "clip_vit_b32_vision_random",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, EDGE, EDGE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", DIM])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="lookalike-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--layers", type=int, default=LAYERS, help="transformer blocks (12 = ViT-B/32)")
    parser.add_argument("--seed", type=int, default=32)
    args = parser.parse_args(argv)
    out = build_vit_model(args.directory, layers=args.layers, seed=args.seed)
    mib = (out / "model.onnx").stat().st_size / 2**20
    print(f"{out}: model.onnx {mib:.0f} MiB, {vit_macs_per_image(args.layers) / 1e9:.2f} G multiply-adds an image")


if __name__ == "__main__":
    main()
