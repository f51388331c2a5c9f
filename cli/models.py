"""`lookalike model`: quantize the configured models, and compare two models on the user's own catalogue."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from lookalike.cli.usage import PlainUsage, fail, note

model_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Make a faster model and see what it costs in quality on your own catalogue.",
)



@model_app.command(
    "quantize", cls=PlainUsage, short_help="Write int8 copies of the configured models, with sizes and speeds."
)
def quantize(
    out: Annotated[Path, typer.Option(help="Where to write the int8 model directories (vision/ and text/).")] = Path(
        "models-int8"
    ),
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
) -> None:
    """Dynamic int8 quantization (onnxruntime) of the configured vision model (LOOKALIKE_MODEL_DIR) and text
    model (LOOKALIKE_TEXT_MODEL_DIR), written as directories that those settings load as they are. Prints the
    size and speed of both. Needs the `quantize` extra (pip install 'lookalike[quantize]')."""
    from lookalike.app.models import quantize_models
    from lookalike.config.settings import get_settings

    reports = quantize_models(get_settings(), out, note)
    if not as_json:
        for kind, report in reports.items():
            before, after = report.bytes_before / 2**20, report.bytes_after / 2**20
            print(
                f"{kind:6s} {report.output}: {before:.1f} MiB -> {after:.1f} MiB ({report.size_ratio:.1f}x smaller);"
                f" {report.rate_before:.1f} -> {report.rate_after:.1f} {report.unit} ({report.speedup:.1f}x)"
            )
    if as_json:
        print(
            json.dumps({k: {**asdict(v), "source": str(v.source), "output": str(v.output)} for k, v in reports.items()})
        )
    else:
        print(
            f"use them: LOOKALIKE_MODEL_DIR={out / 'vision'}"
            + (f" LOOKALIKE_TEXT_MODEL_DIR={out / 'text'}" if "text" in reports else "")
        )


@model_app.command(
    "compare", cls=PlainUsage, short_help="How much two vision models agree on your own catalogue."
)
def compare(
    dir_a: Annotated[Path, typer.Argument(metavar="DIR_A", help="A vision model directory (say, the current one).")],
    dir_b: Annotated[Path, typer.Argument(metavar="DIR_B", help="Another one (say, its int8 copy).")],
    sample: Annotated[int, typer.Option(help="How many of the indexed catalogue's images to embed.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed for the sample.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Embed a sample of the indexed catalogue's images with both models and report the mean and 5th-percentile
    cosine between them and how many of each image's 10 nearest products under A model B also returns."""
    from lookalike.app.broker import use_broker
    from lookalike.app.models import compare_on_catalogue
    from lookalike.app.services import Services

    services = Services.on(use_broker(note).settings, note)
    report, skipped = compare_on_catalogue(services, dir_a, dir_b, sample=sample, seed=seed)
    if as_json:
        print(json.dumps({**asdict(report), "overlaps": list(report.overlaps), "skipped": skipped}))
        return
    print(f"images    {report.images} embedded with both ({skipped} could not be fetched)")
    print(
        f"cosine    mean {report.cosine_mean:.4f}, 5th percentile {report.cosine_p5:.4f}, min {report.cosine_min:.4f}"
    )
    print(
        f"top {report.k}    mean {report.overlap_mean:.2f} of A's {report.k} nearest also in B's "
        f"(min {report.overlap_min})"
    )


@model_app.command(
    "tiny", cls=PlainUsage, short_help="Write tiny stand-in models (vision and text) to try lookalike offline."
)
def tiny(
    out: Annotated[Path, typer.Argument(metavar="DIR", help="Where to write vision/ and text/.")] = Path("models"),
) -> None:
    """Write DIR/vision and DIR/text: tiny models with CLIP ViT-B/32's interfaces (512-d), for a machine that
    cannot download the real ones. Every command runs with them (a re-encoded copy of a photo finds its
    original; a word of a product's name finds it by keyword), but what looks alike means little. Point
    LOOKALIKE_MODEL_DIR and LOOKALIKE_TEXT_MODEL_DIR at them. Needs the tiny-model extra
    (pip install 'lookalike[tiny-model]')."""
    from lookalike.testing.tiny_model import build_tiny_model, build_tiny_text_model

    try:
        vision = build_tiny_model(out / "vision")
        text = build_tiny_text_model(out / "text")
    except ImportError as exc:
        raise fail(
            f"writing the tiny models needs the tiny-model extra: pip install 'lookalike[tiny-model]' ({exc})"
        ) from None
    except OSError as exc:
        raise fail(f"{out}: {exc.strerror or exc}") from None
    print(f"wrote {vision} and {text}")
    print(f"use them: export LOOKALIKE_MODEL_DIR={vision} LOOKALIKE_TEXT_MODEL_DIR={text}")
