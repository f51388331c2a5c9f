"""Decode stage: every accepted format and mode -> RGB 224x224, hostile bytes -> ImageRejected with a reason."""

from __future__ import annotations

import io
import resource
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lookalike.testing import images
from lookalike.worker.decode import (
    MODEL_INPUT_EDGE,
    ImageRejected,
    ImageTooLarge,
    decode_image,
    decode_transport,
    encode_for_transport,
    fit_to_edge,
)

MAX_PIXELS = 40_000_000
FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP"})
EDGE = MODEL_INPUT_EDGE
WHITE = np.array([255, 255, 255])


def decode(data: bytes, **overrides: object) -> Image.Image:
    options: dict[str, object] = {"max_pixels": MAX_PIXELS, "formats": FORMATS, **overrides}
    return decode_image(data, **options)  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def reference(seed: int) -> np.ndarray:
    """The source photo, geometry as the decoder should produce it, straight from the RGB original."""
    return pixels(fit_to_edge(images.product_image(seed), EDGE))


def assert_model_ready(image: Image.Image) -> None:
    assert image.mode == "RGB"
    assert image.size == (EDGE, EDGE)


def rejected(data: bytes, **overrides: object) -> ImageRejected:
    with pytest.raises(ImageRejected) as excinfo:
        decode(data, **overrides)
    return excinfo.value


# ------------------------------------------------------------------------------------------ formats
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP"])
def test_formats_decode_to_model_input(fmt: str) -> None:
    image = decode(images.product_bytes(11, fmt))
    assert_model_ready(image)
    # The right picture, not just the right shape (lossy formats allow a little noise).
    assert np.abs(pixels(image) - reference(11)).mean() < 4


def test_cmyk_jpeg() -> None:
    data = images.cmyk_jpeg(12)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = decode(data)
    assert_model_ready(image)
    assert np.abs(pixels(image) - reference(12)).mean() < 4


def test_palette_png_with_transparency_helper() -> None:
    data = images.palette_png_with_transparency(13)
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and "transparency" in opened.info
    assert_model_ready(decode(data))


def test_palette_transparency_becomes_white() -> None:
    palette_image = Image.new("P", (300, 300), 0)
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)  # index 0 red (transparent), 1 blue
    palette_image.paste(1, (150, 0, 300, 300))
    buffer = io.BytesIO()
    palette_image.save(buffer, format="PNG", transparency=0)
    array = pixels(decode(buffer.getvalue()))
    assert np.abs(array[:, :100] - WHITE).max() <= 1, "transparent palette entry not flattened onto white"
    assert np.abs(array[:, -100:] - np.array([0, 0, 255])).max() <= 1


def test_rgba_png_helper_transparent_corners_are_white() -> None:
    image = decode(images.rgba_png(14))
    assert_model_ready(image)
    array = pixels(image)
    # The helper's alpha is an ellipse inset by 40 px: the top rows of the crop are fully transparent.
    assert np.abs(array[:8] - WHITE).max() <= 1
    assert np.abs(array[EDGE // 2 - 10 : EDGE // 2 + 10] - WHITE).mean() > 5  # the photo is still there


@pytest.mark.parametrize(
    ("mode", "transparent", "opaque", "expected_opaque"),
    [
        ("RGBA", (255, 0, 0, 0), (0, 128, 0, 255), (0, 128, 0)),
        ("LA", (0, 0), (60, 255), (60, 60, 60)),
    ],
)
def test_alpha_is_flattened_onto_white(
    mode: str, transparent: tuple[int, ...], opaque: tuple[int, ...], expected_opaque: tuple[int, int, int]
) -> None:
    source = Image.new(mode, (400, 400), transparent)
    source.paste(Image.new(mode, (200, 400), opaque), (200, 0))
    data = images.encode(source, "PNG")
    array = pixels(decode(data))
    # Fully transparent pixels are white, whatever colour hides under the alpha (red, or black for LA).
    assert np.abs(array[:, :90] - WHITE).max() <= 1
    assert np.abs(array[:, -90:] - np.array(expected_opaque)).max() <= 1


def test_la_png_helper() -> None:
    assert_model_ready(decode(images.la_png(15)))


def _sixteen_bit_png(seed: int) -> tuple[bytes, bytes]:
    """A 16-bit greyscale PNG and the 8-bit greyscale PNG it was made from."""
    grey = images.product_image(seed).convert("L")
    wide = np.asarray(grey, dtype=np.uint16) * 257
    sixteen = Image.fromarray(wide)  # Pillow infers I;16 from the uint16 array
    assert sixteen.mode == "I;16"
    return images.encode(sixteen, "PNG"), images.encode(grey, "PNG")


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    data, eight_bit = _sixteen_bit_png(16)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = decode(data)
    assert_model_ready(image)
    expected = pixels(decode(eight_bit)).mean()
    assert expected < 240, "the test image must not be near-white itself"
    assert abs(pixels(image).mean() - expected) < 3


def test_dark_sixteen_bit_png_stays_dark() -> None:
    wide = np.full((120, 160), 20 * 257, dtype=np.uint16)  # grey level 20 in 16 bits
    image = decode(images.encode(Image.fromarray(wide), "PNG"))
    assert abs(pixels(image).mean() - 20) < 2


def test_sixteen_bit_png_helper() -> None:
    data = images.sixteen_bit_png(16)
    grey_mean = pixels(decode(images.encode(images.product_image(16).convert("L"), "PNG"))).mean()
    assert abs(pixels(decode(data)).mean() - grey_mean) < 3


def test_animated_gif_uses_first_frame() -> None:
    first_alone = images.encode(images.product_image(17).convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    second_alone = images.encode(images.product_image(18).convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    animated = pixels(decode(images.animated_gif(17, frames=3)))
    assert np.abs(animated - pixels(decode(first_alone))).mean() < 2
    assert np.abs(animated - pixels(decode(second_alone))).mean() > 20


# ------------------------------------------------------------------------------------------ rejections
def test_truncated_jpeg() -> None:
    error = rejected(images.truncated(images.product_bytes(20), keep=0.5))
    assert error.reason == "truncated"
    assert not isinstance(error, ImageTooLarge)


def test_truncated_png() -> None:
    assert rejected(images.truncated(images.product_bytes(21, "PNG"), keep=0.5)).reason == "truncated"


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is not an image at all" * 4,
        b"<!DOCTYPE html><html><body>Access denied</body></html>",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        b'{"error": "not found"}',
        b"\x00" * 64,
    ],
    ids=["text", "html", "pdf", "json", "zeros"],
)
def test_not_an_image(data: bytes) -> None:
    assert rejected(data).reason == "not_an_image"


def test_empty() -> None:
    assert rejected(b"").reason == "empty"


def test_png_bomb_refused_from_the_header() -> None:
    data = images.png_bomb()
    assert len(data) < 100_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.monotonic()
    with pytest.raises(ImageTooLarge) as excinfo:
        decode(data)
    elapsed = time.monotonic() - started
    peak_growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert excinfo.value.reason == "too_many_pixels"
    # Pillow's own bomb limit caught this one; the detail still names the setting that refuses it.
    assert excinfo.value.detail.startswith("over LOOKALIKE_MAX_IMAGE_PIXELS (")
    assert isinstance(excinfo.value, ImageRejected)
    assert elapsed < 1.0
    assert peak_growth_mb < 100  # 30000x30000 would be ~900 MB as L, 2.7 GB as RGB


def test_image_over_our_cap_but_under_pillows_is_refused() -> None:
    data = images.png_bomb(8000, 8000)  # 64 Mpx: Pillow only warns, the 40 Mpx cap refuses
    started = time.monotonic()
    error = rejected(data)
    assert isinstance(error, ImageTooLarge) and error.reason == "too_many_pixels"
    assert error.detail.endswith("over LOOKALIKE_MAX_IMAGE_PIXELS (40000000)"), error.detail
    assert time.monotonic() - started < 1.0
    assert isinstance(rejected(images.product_bytes(22), max_pixels=640 * 480 - 1), ImageTooLarge)
    assert_model_ready(decode(images.product_bytes(22), max_pixels=640 * 480))


@pytest.mark.parametrize(
    ("data_fmt", "formats"),
    [("TIFF", FORMATS), ("BMP", frozenset({"JPEG"})), ("PNG", frozenset({"JPEG", "WEBP"}))],
)
def test_format_outside_the_allow_list(data_fmt: str, formats: frozenset[str]) -> None:
    data = images.encode(images.product_image(23), data_fmt)
    assert rejected(data, formats=formats).reason == "not_an_image"


def test_allow_list_is_case_insensitive() -> None:
    assert_model_ready(decode(images.product_bytes(24), formats={"jpeg"}))


# ------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("size", [(2000, 50), (50, 2000), (10, 10), (1, 1), (224, 224), (225, 3000)])
def test_any_shape_gives_model_input(size: tuple[int, int]) -> None:
    data = images.product_bytes(25, "PNG", size=size)
    image = decode(data)
    assert_model_ready(image)


def test_tiny_image_is_upscaled_not_padded() -> None:
    source = Image.new("RGB", (10, 10), (200, 30, 40))
    array = pixels(decode(images.encode(source, "PNG")))
    assert np.abs(array - np.array([200, 30, 40])).max() <= 1


def test_centre_crop_keeps_the_middle() -> None:
    source = Image.new("RGB", (3000, 100), (0, 0, 255))
    source.paste((255, 0, 0), (1400, 0, 1600, 100))  # a red band in the middle, 200/3000 of the width
    array = pixels(decode(images.encode(source, "PNG")))
    assert np.abs(array[:, EDGE // 2] - np.array([255, 0, 0])).max() <= 2


def test_extreme_aspect_ratio_does_not_blow_up_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    data = images.encode(Image.new("RGB", (20000, 2), (10, 200, 30)), "PNG")
    assert len(data) < 2000
    assert MAX_PIXELS > 20000 * 2
    limit = 20000 * 2 + 4 * EDGE * EDGE  # no intermediate bigger than the source plus a few model squares
    original_resize = Image.Image.resize
    requested: list[tuple[int, int]] = []

    def guarded_resize(self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        requested.append(tuple(size))  # type: ignore[arg-type]
        if size[0] * size[1] > limit:
            raise AssertionError(f"intermediate image of {size[0]}x{size[1]} pixels requested")
        return original_resize(self, size, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", guarded_resize)
    image = decode(data)
    assert_model_ready(image)


# ------------------------------------------------------------------------------------------ transport
@pytest.mark.parametrize("seed", [30, 31, 32])
def test_transport_round_trip(seed: int) -> None:
    image = decode(images.product_bytes(seed, "PNG", size=(1200, 900)))
    data = encode_for_transport(image)
    assert len(data) < 40_000
    back = decode_transport(data)
    assert back.mode == "RGB"
    assert back.size == image.size == (EDGE, EDGE)
    assert np.abs(pixels(back) - pixels(image)).mean() < 3


def test_transport_of_noise_stays_small() -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (EDGE, EDGE, 3), dtype=np.uint8), "RGB")
    data = encode_for_transport(noise)
    assert decode_transport(data).size == (EDGE, EDGE)
    assert len(data) < 80_000  # worst case: incompressible content; real photos stay far under 40 kB


# ------------------------------------------------------------------------------------------ fuzzing
_MAGIC = [
    b"",
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xdb",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"GIF87a",
    b"GIF89a",
    b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    b"RIFF\x00\x10\x00\x00WEBPVP8L",
    b"BM",
    b"II*\x00",
]
_SEEDS = [images.product_bytes(40, fmt, size=(48, 32)) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "BMP")]


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "magic", "mutated"]))
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "magic":
        return draw(st.sampled_from(_MAGIC)) + draw(st.binary(max_size=2048))
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 12))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
@given(hostile_bytes())
def test_fuzz_only_image_rejected_escapes(data: bytes) -> None:
    try:
        image = decode(data)
    except ImageRejected as error:
        assert error.reason in {
            "empty",
            "not_an_image",
            "corrupt_header",
            "truncated",
            "decode_error",
            "too_many_pixels",
        }
        return
    assert_model_ready(image)


# ------------------------------------------------------------------------------------------ orientation
def _sideways_jpeg(orientation: int) -> bytes:
    """A landscape photo stored as the camera saw it: red left half, blue right half, with its EXIF tag."""
    stored = Image.new("RGB", (800, 600), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 400, 600))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("orientation", "top", "bottom"),
    [(6, (255, 0, 0), (0, 0, 255)), (8, (0, 0, 255), (255, 0, 0)), (1, None, None)],
)
def test_exif_orientation_is_applied(
    orientation: int, top: tuple[int, int, int] | None, bottom: tuple[int, int, int] | None
) -> None:
    # Orientation 6 (the phone was held upright): turn 90 degrees clockwise to show it, so the stored left
    # half ends up on top; 8 is the other way round; 1 leaves it as stored (left red, right blue).
    array = pixels(decode(_sideways_jpeg(orientation)))
    if top is None:
        assert np.abs(array[EDGE // 2, 20] - np.array([255, 0, 0])).max() <= 8
        assert np.abs(array[EDGE // 2, EDGE - 20] - np.array([0, 0, 255])).max() <= 8
    else:
        assert np.abs(array[20, EDGE // 2] - np.array(top)).max() <= 8
        assert np.abs(array[EDGE - 20, EDGE // 2] - np.array(bottom)).max() <= 8


def test_a_broken_exif_block_costs_the_orientation_not_the_image() -> None:
    data = _sideways_jpeg(6)
    start = data.index(b"Exif\x00\x00")
    broken = data[: start + 6] + b"\xff" * 16 + data[start + 22 :]
    assert_model_ready(decode(broken))


# ------------------------------------------------------------------------------------------ transport is checked
def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        _encoded(Image.new("RGB", (EDGE, EDGE), (9, 9, 9)), "TIFF"),
        _encoded(Image.new("RGB", (EDGE, EDGE), (9, 9, 9)), "ICO", sizes=[(64, 64)]),
        _encoded(Image.new("RGB", (EDGE, EDGE), (9, 9, 9)), "PNG"),
        _encoded(Image.new("RGB", (EDGE + 1, EDGE), (9, 9, 9)), "JPEG"),
        _encoded(Image.new("L", (EDGE, EDGE), 9), "JPEG"),
        _encoded(Image.new("CMYK", (EDGE, EDGE), (9, 9, 9, 9)), "JPEG"),
        images.png_bomb(9400, 9400),  # 88 Mpx
        b"",
        b"not an image at all",
    ],
    ids=["tiff", "ico", "png", "jpeg-225x224", "jpeg-grey", "jpeg-cmyk", "png-88mpx", "empty", "text"],
)
def test_transport_accepts_only_what_the_fetch_stage_produces(data: bytes) -> None:
    started = time.monotonic()
    with pytest.raises(ImageRejected) as excinfo:
        decode_transport(data)
    assert excinfo.value.reason == "bad_transport"
    assert time.monotonic() - started < 1.0


def test_transport_refuses_a_truncated_jpeg_of_the_right_size() -> None:
    data = encode_for_transport(decode(images.product_bytes(33)))
    with pytest.raises(ImageRejected) as excinfo:
        decode_transport(data[: len(data) // 2])
    assert excinfo.value.reason == "bad_transport"
