"""Decode stage: untrusted bytes -> an RGB image of the model's input size, or a clear reason why not.

The order matters for safety: the header is parsed first (format and pixel count are known without decoding
pixel data), the format is checked against the allow-list and the pixel count against the cap, and only
then are pixels decoded. JPEGs are decoded at a reduced scale (libjpeg's DCT scaling) when the full size is
not needed, which is most of the decode cost saved for free.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from lookalike.state.errors import DECODE, Rejected

MODEL_INPUT_EDGE = 224
TRANSPORT_QUALITY = 95
_BACKGROUND = (255, 255, 255)


class ImageRejected(Rejected):
    """The bytes are not an image lookalike accepts; ``reason`` is a short stable token."""

    stage = DECODE


class ImageTooLarge(ImageRejected):
    def __init__(self, detail: str) -> None:
        super().__init__("too_many_pixels", detail)


def open_checked(data: bytes, *, max_pixels: int, formats: Iterable[str]) -> Image.Image:
    """Parse only the header; refuse unknown formats and images over ``max_pixels`` before any decoding."""
    if not data:
        raise ImageRejected("empty", "no bytes")
    allowed = {name.upper() for name in formats}
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns or raises on open; ours below is stricter and gives a reason.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(allowed) or None)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_an_image", f"not one of {', '.join(sorted(allowed))}") from exc
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error) as exc:
        raise ImageRejected("corrupt_header", f"{type(exc).__name__}: {exc}"[:200]) from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt_header", f"size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} = {width * height} pixels > {max_pixels}")
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is flattened onto white, as catalogue pages show it."""
    mode = image.mode
    if mode.startswith("I;16"):
        # 16-bit greyscale: keep the high byte (integer work, no float copies of a 40 Mpx canvas) instead of
        # clipping everything above 255 to white.
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
        mode = "L"
    elif mode == "I":
        array = np.asarray(image, dtype=np.int32)
        shift = 8 if array.max(initial=0) > 255 else 0
        image = Image.fromarray(np.clip(array >> shift, 0, 255).astype(np.uint8))
        mode = "L"
    elif mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float32))
        low, high = float(array.min(initial=0)), float(array.max(initial=0))
        scale = 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(((array - low) * scale).astype(np.uint8))
        mode = "L"
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if mode != "RGB":
        return image.convert("RGB")
    return image


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    formats: Iterable[str],
    edge: int = MODEL_INPUT_EDGE,
) -> Image.Image:
    """Bytes -> RGB image, shortest side ``edge`` and centre-cropped to ``edge`` x ``edge``.

    That is exactly CLIP's preprocessing geometry (resize the shortest side, centre crop), done here so that
    only a small image travels to the embedding stage; the model's own preprocessing then finds nothing to do
    but normalise. Raises :class:`ImageRejected` with a reason for anything it cannot turn into pixels.
    """
    image = open_checked(data, max_pixels=max_pixels, formats=formats)
    try:
        if image.format == "JPEG":
            # Decode at the smallest 1/2, 1/4 or 1/8 scale that still covers the target size.
            image.draft("RGB", (edge, edge))
        image.seek(0)  # animated GIF/WebP: the first frame
        image.load()
        image = _to_rgb(image)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from exc
    except OSError as exc:
        text = str(exc)
        if "truncated" in text or "broken data stream" in text or "unrecognized data stream" in text:
            raise ImageRejected("truncated", text[:200]) from exc
        raise ImageRejected("decode_error", f"{type(exc).__name__}: {text}"[:200]) from exc
    except (SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, MemoryError, struct.error) as exc:
        raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}"[:200]) from exc
    return fit_to_edge(image, edge)


def fit_to_edge(image: Image.Image, edge: int) -> Image.Image:
    """The centred square of the image, resized to ``edge`` x ``edge`` (bicubic) in one step.

    The same geometry as resizing the shortest side to ``edge`` and centre-cropping, but the crop comes first,
    so a sliver of an image (20000 x 2 pixels) never asks for a 2,240,000 x 224 intermediate.
    """
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    if (width, height) == (edge, edge):
        return image
    return image.resize(
        (edge, edge), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side), reducing_gap=3.0
    )


def encode_for_transport(image: Image.Image) -> bytes:
    """The compact form a prepared image crosses the broker in (a model-sized JPEG, ~10-25 kB)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=TRANSPORT_QUALITY)
    return buffer.getvalue()


def decode_transport(data: bytes) -> Image.Image:
    """Inverse of :func:`encode_for_transport` (trusted input: it was produced by a fetch worker)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB") if image.mode != "RGB" else image
