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


class _Graph:
    """The ONNX graph being written: its nodes and its weights (drawn from ``rng``)."""

    def __init__(self, rng: np.random.Generator) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.rng = rng
        self.initializers: list[Any] = []
        self.nodes: list[Any] = []
        self.heads_shape = self.const("heads_shape", np.array([0, TOKENS, HEADS, WIDTH // HEADS], dtype=np.int64))
        self.tokens_shape = self.const("tokens_shape", np.array([0, TOKENS, WIDTH], dtype=np.int64))
        self.scale = self.const("attention_scale", np.array((WIDTH // HEADS) ** -0.5, dtype=np.float32))
        self.gelu_factor = self.const("quick_gelu_factor", np.array(1.702, dtype=np.float32))

    def weight(self, name: str, shape: tuple[int, ...], std: float = 0.02) -> str:
        values = (self.rng.standard_normal(shape) * std).astype(np.float32)
        self.initializers.append(self.numpy_helper.from_array(values, name))
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def layer_norm(self, x: str, prefix: str) -> str:
        scale = self.const(f"{prefix}.weight", np.ones(WIDTH, dtype=np.float32))
        shift = self.const(f"{prefix}.bias", np.zeros(WIDTH, dtype=np.float32))
        return self.node("LayerNormalization", [x, scale, shift], f"{prefix}.out", axis=-1, epsilon=1e-5)

    def linear(self, x: str, prefix: str, fan_in: int, fan_out: int) -> str:
        product = self.node("MatMul", [x, self.weight(f"{prefix}.weight", (fan_in, fan_out))], f"{prefix}.matmul")
        bias = self.const(f"{prefix}.bias", np.zeros(fan_out, dtype=np.float32))
        return self.node("Add", [product, bias], f"{prefix}.out")

    def attention(self, x: str, prefix: str) -> str:
        node = self.node

        def heads(name: str) -> str:
            projected = self.linear(x, f"{prefix}.{name}", WIDTH, WIDTH)
            split = node("Reshape", [projected, self.heads_shape], f"{prefix}.{name}.4d")
            return node("Transpose", [split], f"{prefix}.{name}.heads", perm=[0, 2, 1, 3])

        q, k, v = heads("q_proj"), heads("k_proj"), heads("v_proj")
        k_t = node("Transpose", [k], f"{prefix}.k_t", perm=[0, 1, 3, 2])
        scores = node("Mul", [node("MatMul", [q, k_t], f"{prefix}.qk"), self.scale], f"{prefix}.scores")
        weights = node("Softmax", [scores], f"{prefix}.softmax", axis=-1)
        mixed = node(
            "Transpose", [node("MatMul", [weights, v], f"{prefix}.mixed")], f"{prefix}.mixed.t", perm=[0, 2, 1, 3]
        )
        merged = node("Reshape", [mixed, self.tokens_shape], f"{prefix}.merged")
        return self.linear(merged, f"{prefix}.out_proj", WIDTH, WIDTH)

    def mlp(self, x: str, prefix: str) -> str:
        hidden = self.linear(x, f"{prefix}.fc1", WIDTH, MLP)
        scaled = self.node("Mul", [hidden, self.gelu_factor], f"{prefix}.scaled")
        gate = self.node("Sigmoid", [scaled], f"{prefix}.gate")
        return self.linear(self.node("Mul", [hidden, gate], f"{prefix}.quick_gelu"), f"{prefix}.fc2", MLP, WIDTH)

    def embedded_tokens(self) -> str:
        """Patches -> tokens: (N, 768, 7, 7) -> (N, 49, 768), class token in front, positions added."""
        node, const = self.node, self.const
        patches = node(
            "Conv",
            ["pixel_values", self.weight("patch_embedding", (WIDTH, 3, PATCH, PATCH))],
            "patches",
            kernel_shape=[PATCH, PATCH],
            strides=[PATCH, PATCH],
        )
        patches_shape = const("patches_shape", np.array([0, WIDTH, TOKENS - 1], dtype=np.int64))
        flat = node("Reshape", [patches, patches_shape], "flat")
        tokens = node("Transpose", [flat], "patch_tokens", perm=[0, 2, 1])
        batch = node("Shape", ["pixel_values"], "batch", start=0, end=1)
        class_shape = node(
            "Concat", [batch, const("one_by_width", np.array([1, WIDTH], dtype=np.int64))], "class_shape", axis=0
        )
        class_token = node("Expand", [self.weight("class_embedding", (1, 1, WIDTH)), class_shape], "class_tokens")
        x = node("Concat", [class_token, tokens], "tokens", axis=1)
        return node("Add", [x, self.weight("position_embedding", (TOKENS, WIDTH))], "embedded")


def build_vit_model(directory: str | Path, *, layers: int = LAYERS, seed: int = 32) -> Path:
    """Write ``model.onnx`` and ``preprocessor_config.json`` into ``directory`` (created) and return it.

    Weights are drawn like CLIP's initialisation (normal, std 0.02; LayerNorm scale 1, shift 0), so the
    activations stay in the range a trained model's do and quantization errors are of a realistic size.
    ``layers`` below 12 gives a cheaper graph of the same kind, for tests.
    """
    import onnx
    from onnx import TensorProto, helper

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    graph = _Graph(np.random.default_rng(seed))
    x = graph.layer_norm(graph.embedded_tokens(), "pre_layrnorm")
    for i in range(layers):
        prefix = f"layers.{i}"
        attended = graph.attention(graph.layer_norm(x, f"{prefix}.layer_norm1"), f"{prefix}.self_attn")
        x = graph.node("Add", [x, attended], f"{prefix}.res1")
        fed = graph.mlp(graph.layer_norm(x, f"{prefix}.layer_norm2"), f"{prefix}.mlp")
        x = graph.node("Add", [x, fed], f"{prefix}.res2")
    class_index = graph.const("class_index", np.array(0, dtype=np.int64))
    first = graph.node("Gather", [x, class_index], "pooled", axis=1)  # (N, 768): the class token
    pooled = graph.layer_norm(first, "post_layernorm")
    projection = graph.weight("visual_projection", (WIDTH, DIM))
    graph.nodes.append(helper.make_node("MatMul", [pooled, projection], ["image_embeds"]))

    onnx_graph = helper.make_graph(
        graph.nodes,
        "clip_vit_b32_vision_random",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, EDGE, EDGE])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", DIM])],
        initializer=graph.initializers,
    )
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="lookalike-bench")
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
