"""Fuzzing the untrusted-bytes paths with Hypothesis: the decoder, the in-process query and a real worker.

Over 10,000 generated inputs (derandomized, so every run and CI see the same ones):

* random byte strings, bare and behind the magic numbers of every accepted format;
* real encoded images (JPEG, progressive JPEG, CMYK JPEG, PNG, RGBA/LA/palette/16-bit PNG, GIF, animated GIF,
  WEBP, BMP) with drawn mutations: flipped bytes, truncation, spliced and deleted chunks, and header fields
  (PNG IHDR, JPEG SOF, GIF screen and frame, BMP info header, WEBP VP8X canvas) overwritten with drawn
  values, CRCs fixed up half the time so the parser gets past its checksums.

Every decode must return a 224x224 RGB image or raise ImageRejected with a known reason, within 2 s, and the
process's memory must stay bounded. The query path must answer a list or refuse with a QueryRejected, in this
process and through a real worker (which must survive every input).
"""

from __future__ import annotations

import io
import math
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lookalike.config.settings import get_settings
from lookalike.state.search import QueryRejected, SearchRequest, SearchResponse
from lookalike.testing import images
from lookalike.worker import pipeline
from lookalike.worker.decode import MODEL_INPUT_EDGE, ImageRejected, decode_image
from lookalike.worker.store import PointRecord

KNOWN_REASONS = frozenset({"empty", "not_an_image", "corrupt_header", "too_many_pixels", "truncated", "decode_error"})
QUERY_REASONS = KNOWN_REASONS | {"bad_base64", "too_large", "bad_query"}
CALL_SECONDS = 2.0
RSS_GROWTH_BYTES = 300 * 1024 * 1024

# Production limits, as the workers use them.
MAX_PIXELS = get_settings().max_image_pixels
FORMATS = get_settings().allowed_image_formats

RANDOM_EXAMPLES = 2500
MAGIC_EXAMPLES = 2000
MUTATED_EXAMPLES = 5000
QUERY_EXAMPLES = 1500
WORKER_EXAMPLES = 50


def _progressive_jpeg() -> bytes:
    return images.encode(images.product_image(8, (320, 240)), "JPEG", quality=85, progressive=True)


SEEDS: dict[str, bytes] = {
    "jpeg": images.product_bytes(1, "JPEG", size=(320, 240)),
    "jpeg_progressive": _progressive_jpeg(),
    "jpeg_cmyk": images.cmyk_jpeg(2),
    "png": images.product_bytes(3, "PNG", size=(320, 240)),
    "png_rgba": images.rgba_png(4),
    "png_la": images.la_png(5),
    "png_palette_transparent": images.palette_png_with_transparency(6),
    "png_16bit": images.sixteen_bit_png(7),
    "gif": images.product_bytes(9, "GIF", size=(320, 240)),
    "gif_animated": images.animated_gif(10),
    "webp": images.product_bytes(11, "WEBP", size=(320, 240)),
    "bmp": images.product_bytes(12, "BMP", size=(160, 120)),
}
MAGICS = [
    b"\xff\xd8\xff\xe0",  # JPEG/JFIF
    b"\xff\xd8\xff\xc0",  # JPEG, straight to a frame header
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"GIF87a",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
    b"BM",
    b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00",
]
# Dimensions a header may claim: degenerate, ordinary, at the pixel cap, and far beyond it.
DIMENSIONS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 224, 6324, 6325, 40_000, 65_535, 65_536, 2**31 - 1, 2**31, 2**32 - 1]),
    st.integers(min_value=0, max_value=2**32 - 1),
)

# ------------------------------------------------------------------------------------------ bookkeeping
STATS: dict[str, Any] = {
    "calls": Counter(),
    "reasons": Counter(),
    "accepted": Counter(),
    "slowest": 0.0,
    "slowest_input": "",
}


@pytest.fixture(scope="module", autouse=True)
def memory_baseline() -> Iterator[None]:
    process = psutil.Process()
    STATS["rss_start"] = process.memory_info().rss
    yield


def _rss_growth() -> int:
    return psutil.Process().memory_info().rss - int(STATS["rss_start"])


def check_decode(data: bytes, label: str) -> None:
    """The decoder's contract for one input."""
    STATS["calls"]["decode"] += 1
    started = time.perf_counter()
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS, formats=FORMATS)
    except ImageRejected as exc:
        elapsed = time.perf_counter() - started
        assert exc.reason, f"{label}: empty reason"
        assert exc.reason in KNOWN_REASONS, f"{label}: unknown reason {exc.reason!r} ({exc})"
        STATS["reasons"][exc.reason] += 1
    else:
        elapsed = time.perf_counter() - started
        assert image.mode == "RGB", f"{label}: mode {image.mode}"
        assert image.size == (MODEL_INPUT_EDGE, MODEL_INPUT_EDGE), f"{label}: size {image.size}"
        STATS["accepted"][label.split(":", 1)[0]] += 1
    if elapsed > STATS["slowest"]:
        STATS["slowest"], STATS["slowest_input"] = elapsed, label
    assert elapsed < CALL_SECONDS, f"{label}: decoding took {elapsed:.2f}s ({len(data)} bytes)"


# ------------------------------------------------------------------------------------------ mutations
def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_ihdr(data: bytearray, width: int, height: int, fix_crc: bool, draw: Any) -> None:
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 33:
        return
    data[16:24] = struct.pack(">II", width, height)
    if draw(st.booleans()):  # bit depth / colour type / interlace too
        data[24:29] = bytes(draw(st.lists(st.integers(0, 255), min_size=5, max_size=5)))
    if fix_crc:
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)


def _jpeg_sof(data: bytearray, width: int, height: int, draw: Any) -> None:
    position = 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return
        marker = data[position + 1]
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            data[position + 5 : position + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
            if draw(st.booleans()):  # precision / component count
                data[position + 4] = draw(st.sampled_from([0, 1, 8, 12, 16, 255]))
                data[position + 9] = draw(st.integers(0, 255))
            return
        position += 2 + length


def _gif_sizes(data: bytearray, width: int, height: int, draw: Any) -> None:
    if data[:3] != b"GIF" or len(data) < 13:
        return
    if draw(st.booleans()):
        data[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    frame = data.find(b"\x2c", 13)  # the first image descriptor (or a byte that looks like one)
    if frame != -1 and frame + 9 < len(data):
        data[frame + 5 : frame + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)


def _bmp_header(data: bytearray, width: int, height: int, draw: Any) -> None:
    if data[:2] != b"BM" or len(data) < 34:
        return
    signed = draw(st.booleans())
    data[18:26] = struct.pack("<ii" if signed else "<II", *(_signed(v) if signed else v for v in (width, height)))
    if draw(st.booleans()):
        data[28:30] = struct.pack("<H", draw(st.sampled_from([0, 1, 2, 4, 8, 16, 24, 32, 64, 65535])))
    if draw(st.booleans()):
        data[30:34] = struct.pack("<I", draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 11, 2**32 - 1])))


def _webp_canvas(data: bytearray, width: int, height: int, draw: Any) -> None:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return
    if data[12:16] == b"VP8X":
        data[24:30] = ((width - 1) & 0xFFFFFF).to_bytes(3, "little") + ((height - 1) & 0xFFFFFF).to_bytes(3, "little")
    elif data[12:16] == b"VP8 " and len(data) > 30:
        data[26:30] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    if draw(st.booleans()):
        data[4:8] = struct.pack("<I", draw(DIMENSIONS))  # the RIFF size


def _signed(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


# flip_body twice: mutations that leave the image decodable (and so reach the resize and the model) stay common.
KINDS = ["flip", "flip_body", "flip_body", "truncate", "splice", "delete", "header", "overwrite", "duplicate"]


@st.composite
def mutated_image(draw: Any) -> tuple[str, bytes]:
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    steps = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(KINDS))
        steps.append(kind)
        if not data:
            break
        if kind == "flip_body":
            # A few bytes of entropy-coded data: the image stays recognisable, decoding gets past the header.
            for _ in range(draw(st.integers(1, 4))):
                position = draw(st.integers(len(data) // 4, len(data) - 1))
                data[position] ^= draw(st.integers(1, 255))
        elif kind == "flip":
            for _ in range(draw(st.integers(1, 16))):
                # Headers are where parsers go wrong: half the flips land in the first 512 bytes.
                limit = min(len(data), 512) if draw(st.booleans()) else len(data)
                position = draw(st.integers(0, limit - 1))
                data[position] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif kind == "splice":
            position = draw(st.integers(0, len(data)))
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            start = draw(st.integers(0, len(data) - 1))
            del data[start : start + draw(st.integers(1, 256))]
        elif kind == "overwrite":
            position = draw(st.integers(0, min(len(data), 128) - 1))
            value = draw(st.binary(min_size=1, max_size=8))
            data[position : position + len(value)] = value
        elif kind == "duplicate":
            start = draw(st.integers(0, len(data) - 1))
            piece = bytes(data[start : start + draw(st.integers(1, 2048))])
            position = draw(st.integers(0, len(data)))
            data[position:position] = piece * draw(st.integers(1, 4))
        else:
            width, height = draw(DIMENSIONS), draw(DIMENSIONS)
            _png_ihdr(data, width, height, draw(st.booleans()), draw)
            _jpeg_sof(data, width, height, draw)
            _gif_sizes(data, width, height, draw)
            _bmp_header(data, width, height, draw)
            _webp_canvas(data, width, height, draw)
    return f"{name}:{'+'.join(steps)}", bytes(data)


FUZZ = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
}


# ------------------------------------------------------------------------------------------ (a) random bytes
@settings(max_examples=RANDOM_EXAMPLES, **FUZZ)
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    check_decode(data, "random")


@settings(max_examples=MAGIC_EXAMPLES, **FUZZ)
@given(st.sampled_from(MAGICS), st.binary(max_size=2048))
def test_random_bytes_behind_a_magic_number(magic: bytes, rest: bytes) -> None:
    check_decode(magic + rest, f"magic:{magic[:8]!r}")


# ------------------------------------------------------------------------------------------ (b) mutated images
def test_every_seed_decodes_unmutated() -> None:
    for name, data in SEEDS.items():
        image = decode_image(data, max_pixels=MAX_PIXELS, formats=FORMATS)
        assert image.mode == "RGB" and image.size == (MODEL_INPUT_EDGE, MODEL_INPUT_EDGE), name
    # The 16-bit seed really is 16-bit, so its mutations exercise that path.
    assert Image.open(io.BytesIO(SEEDS["png_16bit"])).mode.startswith("I")


def test_decoded_output_is_not_all_one_colour_for_unmutated_seeds() -> None:
    # Guards the fuzz from vacuous success: a decoder returning blank images would pass the contract above.
    for name, data in SEEDS.items():
        pixels = np.asarray(decode_image(data, max_pixels=MAX_PIXELS, formats=FORMATS), dtype=np.float64)
        assert pixels.std() > 5, name


@settings(max_examples=MUTATED_EXAMPLES, **FUZZ)
@given(mutated_image())
def test_mutated_images_decode_or_are_rejected_with_a_reason(case: tuple[str, bytes]) -> None:
    label, data = case
    check_decode(data, label)


def test_header_claiming_a_huge_canvas_is_refused_from_the_header() -> None:
    # Fixed inputs beside the fuzzing: each format's header rewritten to claim far more than the pixel cap.
    def never(_: Any) -> bool:
        return False

    def always(_: Any) -> bool:
        return True

    cases = {
        "png": lambda data: _png_ihdr(data, 100_000, 100_000, True, never),
        "jpeg": lambda data: _jpeg_sof(data, 65_535, 65_535, never),
        "gif": lambda data: _gif_sizes(data, 65_535, 65_535, always),
        "bmp": lambda data: _bmp_header(data, 100_000, 100_000, never),
    }
    for name, rewrite in cases.items():
        data = bytearray(SEEDS[name])
        rewrite(data)
        started = time.perf_counter()
        with pytest.raises(ImageRejected) as excinfo:
            decode_image(bytes(data), max_pixels=MAX_PIXELS, formats=FORMATS)
        assert time.perf_counter() - started < 0.5, name
        assert excinfo.value.reason == "too_many_pixels", (name, excinfo.value)


# ------------------------------------------------------------------------------------------ (c) the query path
def _seed_store(ctx: pipeline.Context) -> None:
    """A few real points, so valid queries search a non-empty collection."""
    embedder = ctx.embedder
    store = ctx.ready_store(embedder.dim)
    pictures = [decode_image(images.product_bytes(100 + i), max_pixels=MAX_PIXELS, formats=FORMATS) for i in range(5)]
    vectors = embedder.embed(pictures)
    store.upsert(
        [
            PointRecord(f"00000000-0000-0000-0000-00000000000{i}", vectors[i], {"product_id": f"p{i}", "name": "x"})
            for i in range(5)
        ]
    )


@settings(
    max_examples=QUERY_EXAMPLES,
    **{**FUZZ, "suppress_health_check": [*FUZZ["suppress_health_check"], HealthCheck.function_scoped_fixture]},
)
@given(case=mutated_image())
def test_query_in_process_answers_or_refuses(env: dict[str, str], case: tuple[str, bytes]) -> None:
    label, data = case
    ctx = pipeline.current_context()
    if STATS.get("store_seeded_for") != env["LOOKALIKE_QDRANT_PATH"]:
        _seed_store(ctx)
        STATS["store_seeded_for"] = env["LOOKALIKE_QDRANT_PATH"]
    STATS["calls"]["query"] += 1
    started = time.perf_counter()
    try:
        answer = pipeline.answer_query(ctx, SearchRequest(image=data, k=3)).to_data()["results"]
    except QueryRejected as exc:
        assert exc.reason in QUERY_REASONS, f"{label}: unknown reason {exc.reason!r}"
        STATS["reasons"][f"query:{exc.reason}"] += 1
    else:
        assert isinstance(answer, list) and len(answer) <= 3, label
        assert all({"product_id", "score"} <= set(hit) for hit in answer), label
        STATS["accepted"]["query"] += 1
    assert time.perf_counter() - started < CALL_SECONDS, label


def test_query_through_a_real_worker_survives_fuzzed_images(env: dict[str, str], start_worker: Any) -> None:
    from lookalike.app.gateway import Gateway, live_workers
    from lookalike.state.tasks import ENCODE_TASK
    from lookalike.worker.app import QUERY_QUEUE, app

    worker = start_worker()
    gateway = Gateway(get_settings())
    cases: list[tuple[str, bytes]] = []

    @settings(max_examples=WORKER_EXAMPLES, **FUZZ)
    @given(mutated_image())
    def collect(case: tuple[str, bytes]) -> None:
        cases.append(case)

    collect()
    assert len(cases) >= WORKER_EXAMPLES * 0.9
    outcomes: Counter[str] = Counter()
    for label, data in cases:
        # As a shopper sends it: reduced where it arrives, then answered by the workers, or refused.
        try:
            answer = SearchResponse.from_data(gateway.search(SearchRequest(image=data, k=3), timeout=20))
        except QueryRejected as exc:
            assert exc.reason in QUERY_REASONS, f"{label}: unknown reason {exc.reason!r}"
            outcomes[f"refused:{exc.reason}"] += 1
        else:
            assert len(answer.results) <= 3, label
            outcomes["answered"] += 1
        # As anyone who can write to the broker could send it: the same bytes claimed to be prepared. The
        # encode process takes only the transport JPEG; a refusal comes back as data.
        forged = SearchRequest(image=data, prepared=True, k=3).to_message() if data else None
        if forged is not None:
            back = app.send_task(ENCODE_TASK, args=[forged], ignore_result=False).get(timeout=20)
            assert "vector" in back or back.get("error") in QUERY_REASONS | {"bad_transport"}, f"{label}: {back!r}"
        STATS["calls"]["worker_query"] += 1
    # Still alive, still consuming the query queue, still answering a good image.
    assert worker.process.poll() is None, worker.output()
    assert any(QUERY_QUEUE in queues for queues in live_workers(app, timeout=2).values())
    good = gateway.search(SearchRequest(image=images.product_bytes(1), k=3), timeout=20)
    assert isinstance(SearchResponse.from_data(good).results, tuple)
    STATS["worker_outcomes"] = dict(outcomes)
    assert outcomes["answered"] >= 1 and sum(outcomes.values()) == len(cases)


# ------------------------------------------------------------------------------------------ over the whole run
def test_whole_fuzz_run_stayed_bounded_and_reasons_are_documented() -> None:
    """Runs after the fuzzing (file order): the run as a whole stayed within memory, every reason is known."""
    growth = _rss_growth()
    seen = {reason for reason in STATS["reasons"] if not reason.startswith("query:")}
    print(
        f"\nfuzz: calls={dict(STATS['calls'])} accepted={dict(STATS['accepted'])} reasons={dict(STATS['reasons'])} "
        f"slowest={STATS['slowest']:.3f}s ({STATS['slowest_input']}) rss_growth={growth / 2**20:.0f} MiB "
        f"worker={STATS.get('worker_outcomes')}"
    )
    assert seen <= KNOWN_REASONS
    assert growth < RSS_GROWTH_BYTES, f"RSS grew by {growth / 2**20:.0f} MiB"
    if {"decode", "query", "worker_query"} <= set(STATS["calls"]):  # the whole file ran (not a -k selection)
        total = sum(STATS["calls"].values())
        assert total >= 10_000, f"only {total} inputs were tried"
        # The fuzzing reached past the header: both outcomes, and the deep rejections, all occurred.
        assert STATS["accepted"] and {"not_an_image", "truncated"} <= seen


# ------------------------------------------------------------------------------------------ at the pixel cap
# The largest canvas the cap admits (6324 x 6324 = 39,992,976 pixels), in each kind of pixel data: the bound of
# what a fuzzed header can ask for. Each must decode within the time limit, and the Python-heap buffers alive at
# once (what tracemalloc sees: numpy arrays, bytes; not Pillow's own image memory) must stay within about one
# RGBA copy of the canvas (Pillow's WebP decoder hands over exactly that, 160 MiB, as bytes).
CAP_EDGE = math.isqrt(MAX_PIXELS)  # the largest square the pixel cap admits
HEAP_PEAK_BYTES = 200 * 1024 * 1024


def _cap_png(depth: int, colour_type: int, channels: int) -> bytes:
    row_bytes = CAP_EDGE * channels * depth // 8
    row = (b"\x00" + bytes(range(256)) * (row_bytes // 256 + 1))[: 1 + row_bytes]
    packer = zlib.compressobj(6)
    body = b"".join(packer.compress(row) for _ in range(CAP_EDGE)) + packer.flush()
    header = struct.pack(">IIBBBBB", CAP_EDGE, CAP_EDGE, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _cap_encoded(fmt: str, **options: Any) -> bytes:
    gradient = np.tile(np.arange(CAP_EDGE, dtype=np.uint32) % 256, (CAP_EDGE, 1)).astype(np.uint8)
    image = Image.merge("RGB", [Image.fromarray(gradient)] * 3)
    return images.encode(image, fmt, **options)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: _cap_png(8, 0, 1), id="png-grey8"),
        pytest.param(lambda: _cap_png(16, 0, 1), id="png-grey16"),
        pytest.param(lambda: _cap_png(8, 6, 4), id="png-rgba8"),
        pytest.param(lambda: _cap_png(16, 6, 4), id="png-rgba16"),
        pytest.param(lambda: _cap_png(16, 2, 3), id="png-rgb16"),
        pytest.param(lambda: _cap_png(16, 4, 2), id="png-la16"),
        pytest.param(lambda: _cap_encoded("JPEG", quality=50), id="jpeg"),
        pytest.param(lambda: _cap_encoded("GIF"), id="gif"),
        pytest.param(lambda: _cap_encoded("WEBP", quality=50), id="webp"),
    ],
)
def test_largest_allowed_image_decodes_within_time_and_memory(build: Any) -> None:
    import tracemalloc

    data = build()
    tracemalloc.start()
    try:
        started = time.perf_counter()
        image = decode_image(data, max_pixels=MAX_PIXELS, formats=FORMATS)
        elapsed = time.perf_counter() - started
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.mode == "RGB" and image.size == (MODEL_INPUT_EDGE, MODEL_INPUT_EDGE)
    assert peak < HEAP_PEAK_BYTES, f"{len(data)} bytes in, {peak / 2**20:.0f} MiB of buffers at once"
    assert elapsed < CALL_SECONDS, f"{elapsed:.2f}s"
