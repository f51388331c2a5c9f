"""A copy of a catalogue whose images a machine without internet can fetch: `lookalike images localize`.

The shipped sample (and any real catalogue) points at image servers on the internet. Offline, every image
would fail with its reason. A localized copy keeps every row and column as it is, but each image URL's path is
moved under ``base_url`` (``https://images-na.ssl-images-amazon.com/images/I/51j3.jpg`` ->
``http://127.0.0.1:8700/images/I/51j3.jpg``) and an image is written at that path under the copy's directory
(``OUT/images/I/51j3.jpg``, beside ``OUT/catalog.csv``), for `lookalike images serve OUT` to serve. The
originals are never fetched: each image is generated, different per URL and the same on every run, so the
plumbing (download, decode, embed, index, search) runs end to end; what is found to look alike only means
something with the real images.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit

from lookalike.producer.catalog import IMAGE_COLUMN, CatalogError, _open_catalog_bytes

CATALOG_NAME = "catalog.csv"


@dataclass(frozen=True)
class LocalCopy:
    catalog: Path
    directory: Path  # what to serve: the images at their URL paths
    rows: int
    image_files: int


def local_path(url: str) -> str | None:
    """The URL's path as a file name under the copy's directory (``/images/I/a+b.jpg``: decoded, no ``..``);
    None when the entry is not an http(s) URL or has no file name. Its URL is :func:`quote_path` of it."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    names = [name for name in PurePosixPath(unquote(parts.path)).parts if name not in ("/", "", ".", "..")]
    return "/" + "/".join(names) if names else None


def quote_path(path: str) -> str:
    """The URL path a file server answers for ``path`` (``a+b.jpg`` -> ``a%2Bb.jpg``)."""
    return quote(path, safe="/")


def generated_image(path: str, size: int = 320) -> bytes:
    """A product-like JPEG, different per path and the same on every run."""
    from lookalike.testing.images import encode, product_image

    seed = int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:4], "big")
    return encode(product_image(seed, (size, size)), "JPEG", quality=85)


def localize(source: Path, out_dir: Path, base_url: str, *, limit: int | None = None) -> LocalCopy:
    """Write ``out_dir/catalog.csv`` (the first ``limit`` rows of ``source``, image URLs under ``base_url``)
    and one generated image per distinct image path under ``out_dir``, at that path."""
    base = base_url.rstrip("/")
    if local_path(base + "/x") is None:
        raise CatalogError(f"--base-url must be an http(s) URL, not {base_url!r}")
    with _open_catalog_bytes(Path(source)) as (handle, name):
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = list(reader.fieldnames or [])
    if IMAGE_COLUMN not in columns:
        raise CatalogError(f"{name}: no {IMAGE_COLUMN!r} column")
    out_dir.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    rows: list[dict[str, str]] = []
    for row in reader:
        if limit is not None and len(rows) >= limit:
            break
        entries = []
        for entry in (row.get(IMAGE_COLUMN) or "").split("|"):
            path = local_path(entry)
            if path is None:
                entries.append(entry)
                continue
            if path not in written:
                target = out_dir / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(generated_image(path))
                written.add(path)
            entries.append(base + quote_path(path))
        row[IMAGE_COLUMN] = "|".join(entries)
        rows.append(row)
    catalog = out_dir / CATALOG_NAME
    with catalog.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return LocalCopy(catalog=catalog, directory=out_dir, rows=len(rows), image_files=len(written))
