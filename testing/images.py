"""Product-like test images in every format and shape the decoder must handle, good and hostile."""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw

FORMATS = ("JPEG", "PNG", "GIF", "WEBP")


def product_image(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A catalogue-style photo: a tinted studio background with a few bold shapes, different per seed."""
    rng = random.Random(seed)
    width, height = size
    background = tuple(rng.randint(170, 255) for _ in range(3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 6)):
        colour = tuple(rng.randint(0, 200) for _ in range(3))
        x0, y0 = rng.randint(0, width * 3 // 4), rng.randint(0, height * 3 // 4)
        x1, y1 = x0 + rng.randint(width // 8, width // 2), y0 + rng.randint(height // 8, height // 2)
        shape = rng.choice(("rectangle", "ellipse", "polygon"))
        if shape == "rectangle":
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape == "ellipse":
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            points = [(rng.randint(x0, x1), rng.randint(y0, y1)) for _ in range(5)]
            draw.polygon(points, fill=colour)
    return image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    if fmt == "GIF" and image.mode not in ("P", "L"):
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def product_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (640, 480)) -> bytes:
    return encode(product_image(seed, size), fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))


# ---------------------------------------------------------------------------------------- special cases
def cmyk_jpeg(seed: int) -> bytes:
    return encode(product_image(seed).convert("CMYK"), "JPEG", quality=90)


def palette_png_with_transparency(seed: int) -> bytes:
    image = product_image(seed).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encode(image, "PNG", transparency=0)


def rgba_png(seed: int) -> bytes:
    image = product_image(seed).convert("RGBA")
    alpha = Image.new("L", image.size, 0)
    ImageDraw.Draw(alpha).ellipse((40, 40, image.width - 40, image.height - 40), fill=255)
    image.putalpha(alpha)
    return encode(image, "PNG")


def la_png(seed: int) -> bytes:
    image = product_image(seed).convert("LA")
    return encode(image, "PNG")


def sixteen_bit_png(seed: int) -> bytes:
    grey = np.asarray(product_image(seed).convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey.astype(np.uint16)), "PNG")


def animated_gif(seed: int, frames: int = 3) -> bytes:
    images = [product_image(seed + i).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buffer.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(16, int(len(data) * keep))]


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG declaring a huge canvas: must be refused from the header, before any decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    # One compressed row of zeros repeated: a few KB that would inflate to width*height bytes.
    body = zlib.compress(b"\x00" * (width + 1) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def resized_copy(data: bytes, scale: float = 0.6, fmt: str = "JPEG", quality: int = 80) -> bytes:
    """The shopper's photo of a catalogue image: resized and re-encoded."""
    opened = Image.open(io.BytesIO(data))
    opened.seek(0)
    image = opened.convert("RGB")
    image = image.resize(
        (max(1, int(image.width * scale)), max(1, int(image.height * scale))), Image.Resampling.BILINEAR
    )
    return encode(image, fmt, quality=quality) if fmt in ("JPEG", "WEBP") else encode(image, fmt)
