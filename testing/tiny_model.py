"""Tiny ONNX models with CLIP ViT-B/32's interfaces, for tests and benchmarks on machines without the real
weights.

Vision (:func:`build_tiny_model`): input ``pixel_values`` (N, 3, 224, 224) float, output (N, 512).

It average-pools the image to a 3 x 14 x 14 colour layout, centres it per image, and projects it to 512
dimensions with a fixed random matrix: images that look alike get close vectors, a resized or re-encoded
copy lands next to its original, and it costs almost nothing to run. Loaded through fastembed's
``specific_model_path`` exactly as a downloaded model directory is.

Text (:func:`build_tiny_text_model`): inputs ``input_ids`` and ``attention_mask`` (N, L) int64, output
``text_embeds`` (N, 512) float, plus the tokenizer files fastembed's loader reads. The text is lower-cased,
split on whitespace and punctuation, and each word looked up in a small vocabulary (a word outside it is
``[UNK]``); the output is the mean of the words' embedding rows, and each row is a fixed pseudo-random unit
vector seeded by the word itself (:func:`tiny_text_direction`), so a test can compute any query's direction.

``python -m lookalike.testing.tiny_model [--text] DIR`` writes either model into DIR.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

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


def build_tiny_model(directory: str | Path, seed: int = 1234, *, blind: bool = False) -> Path:
    """Write ``model.onnx`` and ``preprocessor_config.json`` into ``directory`` (created) and return it.

    ``blind``: a deliberately bad model of the same interface, whose vector is the same for every image (what a
    broken export or a wrong checkpoint can look like): search with it cannot tell products apart."""
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
        helper.make_node("MatMul", ["centred", "projection"], ["projected" if blind else "image_embeds"]),
    ]
    extra = []
    if blind:
        nodes += [
            helper.make_node("Mul", ["projected", "zero"], ["ignored"]),
            helper.make_node("Add", ["ignored", "constant"], ["image_embeds"]),
        ]
        constant = rng.standard_normal((1, DIM)).astype(np.float32)
        extra = [
            numpy_helper.from_array(np.zeros((1, DIM), dtype=np.float32), "zero"),
            numpy_helper.from_array(constant, "constant"),
        ]
    graph = helper.make_graph(
        nodes,
        "tiny_clip_vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["batch", DIM])],
        initializer=[
            numpy_helper.from_array(projection, "projection"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
            *extra,
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="lookalike-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2))
    return directory


# --- text ------------------------------------------------------------------------------------------------

UNK = "[UNK]"
PAD = "[PAD]"
TEXT_MAX_LENGTH = 77  # CLIP's context
# colours; things a catalogue sells; materials, patterns, sizes; glue words
_TEXT_WORDS = """
    red green blue yellow orange purple pink black white grey gray brown beige gold silver
    kettle teapot mug cup plate bowl pan pot knife fork spoon lamp chair table sofa bed pillow blanket rug vase
    clock mirror shoe shoes sneaker boot boots dress shirt jacket coat hat scarf bag backpack watch ring necklace
    phone laptop headphones camera bottle toy ball bicycle car
    steel stainless wooden wood glass ceramic leather cotton wool plastic metal striped dotted plain floral
    small large big mini round square electric
    a an the and with for of in on
"""
TEXT_VOCABULARY: tuple[str, ...] = tuple(_TEXT_WORDS.split())


def tiny_text_direction(word: str) -> np.ndarray:
    """The (512,) float32 unit vector of ``word``'s row in the tiny text model (the row of ``[UNK]`` is
    ``tiny_text_direction("[UNK]")``; the model uses it for every word outside its vocabulary)."""
    seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "big")
    row = np.random.default_rng(seed).standard_normal(DIM)
    return (row / np.linalg.norm(row)).astype(np.float32)


def _text_tokenizer(vocabulary: Sequence[str]) -> tuple[Tokenizer, dict[str, int]]:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {PAD: 0, UNK: 1}
    for word in vocabulary:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="removed")]
    )
    tokenizer.enable_truncation(max_length=TEXT_MAX_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_token=PAD)
    return tokenizer, vocab


def build_tiny_text_model(directory: str | Path, extra_words: Iterable[str] = ()) -> Path:
    """Write a CLIP-text-shaped ``model.onnx`` and its tokenizer files (``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json``, ``config.json``) into ``directory`` (created) and
    return it. The vocabulary is :data:`TEXT_VOCABULARY` plus ``extra_words`` (lower-case words)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab = _text_tokenizer([*TEXT_VOCABULARY, *(word.lower() for word in extra_words)])
    table = np.zeros((len(vocab), DIM), dtype=np.float32)  # the [PAD] row stays zero (and is masked anyway)
    for word, index in vocab.items():
        if word != PAD:
            table[index] = tiny_text_direction(word)

    # mean over the unmasked tokens: sum(rows * mask) / max(sum(mask), 1)
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["rows"], axis=0),  # (N, L, 512)
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),  # (N, L)
        helper.make_node("Unsqueeze", ["mask", "last_axis"], ["mask3"]),  # (N, L, 1)
        helper.make_node("Mul", ["rows", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "token_axis"], ["summed"], keepdims=0),  # (N, 512)
        helper.make_node("ReduceSum", ["mask", "token_axis"], ["count"], keepdims=1),  # (N, 1)
        helper.make_node("Max", ["count", "one"], ["count_at_least_one"]),
        helper.make_node("Div", ["summed", "count_at_least_one"], ["text_embeds"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_clip_text",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("text_embeds", TensorProto.FLOAT, ["batch", DIM])],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "last_axis"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "token_axis"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="lookalike-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "model.onnx"))

    tokenizer.save(str(directory / "tokenizer.json"))
    special = {"pad_token": PAD, "unk_token": UNK}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                **special,
                "model_max_length": TEXT_MAX_LENGTH,
                "do_lower_case": True,
                "padding_side": "right",
                "tokenizer_class": "PreTrainedTokenizerFast",
            },
            indent=2,
        )
    )
    (directory / "config.json").write_text(
        json.dumps(
            {
                "model_type": "clip_text_model",
                "hidden_size": DIM,
                "projection_dim": DIM,
                "max_position_embeddings": TEXT_MAX_LENGTH,
                "vocab_size": len(vocab),
                "pad_token_id": vocab[PAD],
            },
            indent=2,
        )
    )
    return directory


USAGE = "usage: python -m lookalike.testing.tiny_model [--text] DIR"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the tiny vision model (default) or, with ``--text``, the tiny text model into DIR."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = "--text" in args
    rest = [arg for arg in args if arg != "--text"]
    if len(rest) != 1 or rest[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    directory = build_tiny_text_model(rest[0]) if text else build_tiny_model(rest[0])
    print(directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
