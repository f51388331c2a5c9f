"""What decoding costs in memory, measured: each case runs in a fresh interpreter, because Pillow allocates
pixels outside Python's allocator (tracemalloc cannot see them) and a process's peak RSS only ever grows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.config.cpus import usable_cpus
from lookalike.config.settings import Settings
from lookalike.worker.decode import DECODE_BYTES_PER_PIXEL, ImageTooLarge, decode_image, decode_slots

SIDE = 6324  # 40 Mpx: just under the old default cap

MAKE_PNG = """
import sys
from PIL import Image, ImageDraw
image = Image.new("RGBA", ({side}, {side}), (255, 255, 255, 0))
draw = ImageDraw.Draw(image)
for i in range(12):
    draw.ellipse((400 * i, 300 * i, 400 * i + 1800, 300 * i + 1200), fill=(20 * i, 90, 255 - 20 * i, 255))
image.save(sys.argv[1], format="PNG", optimize=True)
"""

MEASURE = """
import json, resource, sys
from pathlib import Path
from lookalike.worker.decode import decode_image
data = Path(sys.argv[1]).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = decode_image(data, max_pixels=int(sys.argv[2]), formats={{"PNG"}})
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"growth_mib": (after - before) / 1024, "size": image.size, "mode": image.mode}}))
"""


@pytest.fixture(scope="module")
def big_rgba_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("memory") / "big-rgba.png"
    subprocess.run([sys.executable, "-c", MAKE_PNG.format(side=SIDE), str(path)], check=True, timeout=120)
    return path


def _decode_peak(path: Path, max_pixels: int) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE.format(), str(path), str(max_pixels)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return dict(json.loads(done.stdout))


def test_a_small_file_of_many_rgba_pixels_decodes_within_the_size_of_its_pixels(big_rgba_png: Path) -> None:
    # 40 Mpx of RGBA are 153 MiB however the decode goes; every full-size copy on top (a mode conversion, a
    # white canvas, an alpha band) is another 40-150 MiB. Only the decoded pixels themselves may be full size.
    assert big_rgba_png.stat().st_size < 400 * 1024
    pixels_mib = SIDE * SIDE * 4 / 2**20
    measured = _decode_peak(big_rgba_png, SIDE * SIDE)
    print(f"peak RSS growth decoding {SIDE}x{SIDE} RGBA PNG: {measured['growth_mib']:.0f} MiB")
    assert measured["size"] == [224, 224] and measured["mode"] == "RGB"
    assert float(measured["growth_mib"]) <= pixels_mib * 1.25, measured


def test_the_default_pixel_cap_refuses_that_image_before_decoding(big_rgba_png: Path) -> None:
    settings = Settings()
    with pytest.raises(ImageTooLarge):
        decode_image(big_rgba_png.read_bytes(), max_pixels=settings.max_image_pixels, formats={"PNG"})


# ------------------------------------------------------------------------------------------ decode slots
def test_usable_cpus_follow_the_cgroup_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"  # a cgroup v2 root holding cpu.max
    assert usable_cpus(tmp_path / "absent") == affinity
    cpu_max.write_text("max 100000\n")
    assert usable_cpus(tmp_path) == affinity
    cpu_max.write_text("50000 100000\n")  # half a CPU: still one decode's worth
    assert usable_cpus(tmp_path) == 1
    cpu_max.write_text(f"{(affinity + 7) * 100000} 100000\n")  # a quota above the mask: the mask wins
    assert usable_cpus(tmp_path) == affinity


def test_usable_cpus_follow_the_affinity_mask_not_the_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert usable_cpus(tmp_path / "absent") == 2


def test_decode_slots_are_two_per_cpu_within_the_memory_budget() -> None:
    per_image = 16_000_000 * DECODE_BYTES_PER_PIXEL
    assert decode_slots(10 * per_image, 16_000_000, cpus=2) == 4
    assert decode_slots(3 * per_image, 16_000_000, cpus=8) == 3
    assert decode_slots(1, 16_000_000, cpus=8) == 1  # always at least one
    settings = Settings()
    assert decode_slots(settings.decode_memory_budget, settings.max_image_pixels, cpus=64) >= 8
