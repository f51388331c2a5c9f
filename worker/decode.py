"""Decode stage: untrusted bytes -> an RGB image of the model's input size, or a clear reason why not.

The order matters for safety: the header is parsed first (format and pixel count are known without decoding
pixel data), the format is checked against the allow-list and the pixel count against the cap, and only
then are pixels decoded. JPEGs are decoded at a reduced scale (libjpeg's DCT scaling) when the full size is
not needed, which is most of the decode cost saved for free.

Memory: the decoded pixels are the only full-size thing. Mode conversion (palette, alpha flattened onto white,
16-bit) and the box reduction run strip by strip over the centred square, so a small PNG of 40 Mpx RGBA costs
its 153 MiB of pixels and not three times that; EXIF orientation is applied to the 224x224 result. How many
decodes run at once is sized from the CPUs this process may use and a memory budget (:func:`decode_slots`).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from lookalike.config.cpus import usable_cpus
from lookalike.state.errors import DECODE, Rejected

MODEL_INPUT_EDGE = 224
PIXELS_SETTING = "LOOKALIKE_MAX_IMAGE_PIXELS"
TRANSPORT_QUALITY = 95
_BACKGROUND = (255, 255, 255)
# Box-reduce while the image is over this many times the target, then resize (Pillow's reducing_gap).
REDUCING_GAP = 3.0
# Source pixels converted at once: small next to any image worth striping, large enough to keep calls few.
STRIP_PIXELS = 1 << 20
# Worst-case peak bytes per pixel of the cap, measured (tests/test_decode_memory.py): 4 for the decoded RGBA
# pixels, the rest for the decoder's buffers and the strips.
DECODE_BYTES_PER_PIXEL = 5
# EXIF Orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


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
        # Pillow's own limit caught it first: still say which setting refuses it, not Pillow's number.
        raise ImageTooLarge(f"over {PIXELS_SETTING} ({max_pixels} pixels)") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_an_image", f"not one of {', '.join(sorted(allowed))}") from exc
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error) as exc:
        raise ImageRejected("corrupt_header", f"{type(exc).__name__}: {exc}"[:200]) from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt_header", f"size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} = {width * height} pixels, over {PIXELS_SETTING} ({max_pixels})")
    return image


def decode_slots(memory_budget: int, max_pixels: int, cpus: int | None = None) -> int:
    """How many images a fetch process decodes at once: two per usable CPU (Pillow releases the GIL, and
    a second decode covers the first's Python work), fewer when the memory budget cannot hold that many images
    of the largest accepted size. Never fewer than one."""
    cpus = usable_cpus() if cpus is None else cpus  # affinity mask and cgroup quota (lookalike.config.cpus)
    by_memory = memory_budget // max(1, max_pixels * DECODE_BYTES_PER_PIXEL)
    return max(1, min(2 * cpus, by_memory))


def _to_rgb(image: Image.Image, high: int | None = None) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is flattened onto white, as catalogue pages show it.

    ``high`` is the whole image's maximum for 32-bit integer images, so that strips scale alike."""
    mode = image.mode
    if mode.startswith("I;16"):
        # 16-bit greyscale: keep the high byte (integer work, no float copies of a 40 Mpx canvas) instead of
        # clipping everything above 255 to white.
        image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
        mode = "L"
    elif mode == "I":
        array = np.asarray(image, dtype=np.int32)
        shift = 8 if (array.max(initial=0) if high is None else high) > 255 else 0
        image = Image.fromarray(np.clip(array >> shift, 0, 255).astype(np.uint8))
        mode = "L"
    elif mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float32))
        low, top = float(array.min(initial=0)), float(array.max(initial=0))
        scale = 255.0 / (top - low) if top > low else 0.0
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
        orientation = _orientation(image)
        image, box = _reduced_rgb(image, edge)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"over {PIXELS_SETTING} ({max_pixels} pixels)") from exc
    except OSError as exc:
        text = str(exc)
        if "truncated" in text or "broken data stream" in text or "unrecognized data stream" in text:
            raise ImageRejected("truncated", text[:200]) from exc
        raise ImageRejected("decode_error", f"{type(exc).__name__}: {text}"[:200]) from exc
    except (SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, MemoryError, struct.error) as exc:
        raise ImageRejected("decode_error", f"{type(exc).__name__}: {exc}"[:200]) from exc
    image = fit_to_edge(image, edge, box)
    # Orientation commutes with a centred square crop, so it is applied last, to 224x224 pixels.
    return image.transpose(orientation) if orientation is not None else image


def _orientation(image: Image.Image) -> Image.Transpose | None:
    """The transpose that EXIF orientation asks for (phone photos are stored sideways), if any.

    A broken EXIF block costs the orientation, never the image: the pixels are fine."""
    try:
        return _ORIENTATION.get(int(image.getexif().get(0x0112, 1)))
    except Exception:
        return None


def _centred_square(width: int, height: int) -> tuple[float, float, float, float]:
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return (left, top, left + side, top + side)


def _reduced_rgb(image: Image.Image, edge: int) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The centred square of a loaded image as RGB, box-reduced while it is over ``REDUCING_GAP`` times ``edge``;
    and the square's box in the result, for the final resize.

    Converting first would copy the whole image once or twice (RGBA flattened onto a white canvas, a palette
    expanded to RGB); here each strip of whole reduction blocks is cropped, converted and reduced in turn, which
    gives the same pixels (a box reduction is local to its blocks) at the memory of one strip.
    """
    square = _centred_square(*image.size)
    factor = max(1, int((square[2] - square[0]) / edge / REDUCING_GAP))
    if image.mode == "RGB" and factor == 1:
        return image, square
    left, top = math.floor(square[0]), math.floor(square[1])
    right, bottom = math.ceil(square[2]), math.ceil(square[3])
    box = tuple(value / factor for value in (square[0] - left, square[1] - top, square[2] - left, square[3] - top))
    if image.mode == "RGB":
        return image.reduce(factor, (left, top, right, bottom)), box  # type: ignore[return-value]
    if image.mode == "F":
        image = _to_rgb(image)  # float pixels scale by the whole image's range (not an accepted format anyway)
    high = image.getextrema()[1] if image.mode == "I" else None
    width = right - left
    rows = factor * max(1, STRIP_PIXELS // (width * factor))
    reduced = Image.new("RGB", (math.ceil(width / factor), math.ceil((bottom - top) / factor)))
    for y in range(top, bottom, rows):
        strip = _to_rgb(image.crop((left, y, right, min(y + rows, bottom))), high)  # type: ignore[arg-type]
        reduced.paste(strip.reduce(factor) if factor > 1 else strip, (0, (y - top) // factor))
    return reduced, box  # type: ignore[return-value]


def fit_to_edge(image: Image.Image, edge: int, box: tuple[float, float, float, float] | None = None) -> Image.Image:
    """The centred square of the image (or ``box``), resized to ``edge`` x ``edge`` (bicubic) in one step.

    The same geometry as resizing the shortest side to ``edge`` and centre-cropping, but the crop comes first,
    so a sliver of an image (20000 x 2 pixels) never asks for a 2,240,000 x 224 intermediate.
    """
    if box is None:
        if image.size == (edge, edge):
            return image
        box = _centred_square(*image.size)
    if image.size == (edge, edge) and box == (0, 0, edge, edge):
        return image
    return image.resize((edge, edge), Image.Resampling.BICUBIC, box=box, reducing_gap=REDUCING_GAP)


def encode_for_transport(image: Image.Image) -> bytes:
    """The compact form a prepared image crosses the broker in (a model-sized JPEG, ~10-25 kB)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=TRANSPORT_QUALITY)
    return buffer.getvalue()


def decode_transport(data: bytes, *, edge: int = MODEL_INPUT_EDGE) -> Image.Image:
    """Inverse of :func:`encode_for_transport`: accepts only what it produces, an RGB JPEG of ``edge`` x ``edge``.

    Anyone who can write to the broker can put bytes here, so they are not trusted: any other format, mode or
    size (a TIFF, an ICO, an 88 Mpx PNG) is refused from the header with ``bad_transport`` before any pixel
    is decoded, and a JPEG that fails to decode is refused with the same reason.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=["JPEG"])
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error) as exc:
        raise ImageRejected("bad_transport", f"not a JPEG ({type(exc).__name__})") from exc
    if image.format != "JPEG" or image.mode != "RGB" or image.size != (edge, edge):
        found = f"{image.format} {image.mode} {image.size[0]}x{image.size[1]}"
        raise ImageRejected("bad_transport", f"{found}, expected an RGB JPEG of {edge}x{edge}")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, struct.error) as exc:
        raise ImageRejected("bad_transport", f"{type(exc).__name__}: {exc}"[:200]) from exc
    return image
