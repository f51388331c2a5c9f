"""Catalogue CSV (Amazon product dataset 2020 schema) -> products with their usable image URLs.

The image rule, applied to each row's ``Image`` field:

1. split on ``|`` and strip each entry; empty entries go;
2. entries that are not an http(s) URL with a host go (counted as invalid);
3. placeholders go, by content and not by position: an entry matching ``PLACEHOLDER_PATTERN`` (Amazon's
   shared ``.../images/G/01/x-locale/common/transparent-pixel.jpg`` and its siblings), or an entry shared
   by more than half of the file's products when the file has at least ``MIN_PRODUCTS_FOR_SHARED`` products
   (a placeholder nobody told us about). The seed notebook dropped the last entry blindly, which loses a real
   image on every row that has no placeholder;
4. repeats of a URL within one product go;
5. a row left with no image is skipped and counted under its reason.
"""

from __future__ import annotations

import io
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from lookalike.producer.product import Product, is_http_url

if TYPE_CHECKING:
    import pandas as pd

ID_COLUMN = "Uniq Id"
NAME_COLUMN = "Product Name"
CATEGORY_COLUMN = "Category"
PRICE_COLUMN = "Selling Price"
DESCRIPTION_COLUMN = "About Product"
IMAGE_COLUMN = "Image"
URL_COLUMN = "Product Url"
REQUIRED_COLUMNS = (
    ID_COLUMN,
    NAME_COLUMN,
    CATEGORY_COLUMN,
    PRICE_COLUMN,
    DESCRIPTION_COLUMN,
    IMAGE_COLUMN,
    URL_COLUMN,
)

PLACEHOLDER_PATTERN = re.compile(r"/images/G/\d+/x-locale/common/|transparent-pixel\.", re.IGNORECASE)
MIN_PRODUCTS_FOR_SHARED = 20
# Largest CSV read out of a zip. A zip member inflates to whatever its header says (a few kB can claim gigabytes),
# and the whole CSV is held in memory, then parsed: 1 GiB is ten times the largest catalogue export we know of.
MAX_ZIPPED_CSV_BYTES = 1 << 30
SHARED_FRACTION = 0.5

# Why a row gave no product.
SKIP_MISSING_ID = "missing_id"
SKIP_DUPLICATE_ID = "duplicate_id"
SKIP_NO_IMAGE = "no_image_field"
SKIP_ONLY_PLACEHOLDERS = "only_placeholders"
SKIP_NO_VALID_URL = "no_valid_url"


class CatalogError(Exception):
    """The catalogue cannot be read at all; the message is one line naming the problem."""


@dataclass
class ImageAccounting:
    """Where every ``Image`` entry of the selected rows went; ``entries`` is the sum of the rest."""

    entries: int = 0
    kept: int = 0
    placeholders: int = 0
    duplicates: int = 0
    invalid: int = 0
    empty: int = 0
    in_skipped_rows: int = 0


@dataclass
class CatalogReport:
    source: str
    encoding: str
    rows_read: int
    rows_selected: int
    malformed_lines: int
    products: list[Product]
    skipped: Counter[str] = field(default_factory=Counter)
    images: ImageAccounting = field(default_factory=ImageAccounting)
    shared_placeholders: list[str] = field(default_factory=list)

    @property
    def image_count(self) -> int:
        return sum(len(p.image_urls) for p in self.products)


@contextmanager
def _open_catalog_bytes(path: Path, max_zipped_bytes: int = MAX_ZIPPED_CSV_BYTES) -> Iterator[tuple[IO[bytes], str]]:
    """The CSV's bytes: the file itself, or the one CSV inside a zip, at any depth (at most ``max_zipped_bytes``
    inflated: refused from its header when it declares more, and cut while reading if it lies)."""
    if not path.exists():
        raise CatalogError(f"{path}: no such file")
    if path.is_dir():
        raise CatalogError(f"{path}: is a directory, not a CSV or zip file")
    if zipfile.is_zipfile(path):
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise CatalogError(f"{path}: broken zip file ({exc})") from exc
        with archive:
            csvs = [
                info
                for info in archive.infolist()
                if not info.is_dir()
                and info.filename.lower().endswith(".csv")
                and not Path(info.filename).name.startswith("._")
            ]
            if not csvs:
                raise CatalogError(f"{path}: the zip holds no .csv file")
            if len(csvs) > 1:
                names = ", ".join(info.filename for info in csvs[:5])
                raise CatalogError(f"{path}: the zip holds {len(csvs)} CSV files ({names}); expected one")
            member_info = csvs[0]
            source = f"{path}!{member_info.filename}"
            too_large = f"{source}: the CSV inflates to more than {max_zipped_bytes} bytes (a zip bomb?)"
            if member_info.file_size > max_zipped_bytes:
                raise CatalogError(too_large)
            try:
                with archive.open(member_info) as member:
                    data = member.read(max_zipped_bytes + 1)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise CatalogError(f"{source}: broken zip member ({exc})") from exc
            if len(data) > max_zipped_bytes:
                raise CatalogError(too_large)
            yield io.BytesIO(data), source
        return
    with path.open("rb") as handle:
        yield handle, str(path)


def _read_frame(raw: bytes, source: str) -> tuple[pd.DataFrame, str, int]:
    import pandas as pd  # here, not at import: publishing a change event must not load pandas (and numpy)

    if not raw.strip():
        raise CatalogError(f"{source}: the file is empty")
    if b"\x00" in raw[:65536]:
        raise CatalogError(f"{source}: not a CSV file (binary content)")
    try:
        text, encoding = raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        # Older exports come in Windows-1252/Latin-1; Latin-1 decodes any byte, so nothing is refused.
        text, encoding = raw.decode("latin-1"), "latin-1"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            frame = pd.read_csv(
                io.StringIO(text),
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                on_bad_lines="warn",
                engine="c",
            )
        except pd.errors.EmptyDataError as exc:
            raise CatalogError(f"{source}: the file is empty") from exc
        except (pd.errors.ParserError, ValueError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CatalogError(f"{source}: not a readable CSV file ({first_line})") from exc
    malformed = sum(
        str(w.message).count("Skipping line") or 1 for w in caught if issubclass(w.category, pd.errors.ParserWarning)
    )
    frame.columns = [str(column).strip() for column in frame.columns]
    return frame, encoding, malformed


def _split_images(field_value: str) -> list[str]:
    return [entry.strip() for entry in field_value.split("|")]


def find_shared_placeholders(image_fields: list[str]) -> list[str]:
    """URLs that more than half of the products list: a placeholder, whatever its name."""
    if len(image_fields) < MIN_PRODUCTS_FOR_SHARED:
        return []
    seen: Counter[str] = Counter()
    for value in image_fields:
        seen.update({entry for entry in _split_images(value) if entry})
    threshold = SHARED_FRACTION * len(image_fields)
    return sorted(url for url, count in seen.items() if count > threshold)


def usable_image_urls(
    entries: list[str], shared: frozenset[str], accounting: ImageAccounting | None = None
) -> tuple[list[str], str | None]:
    """Apply the image rule to one row's entries: (kept URLs in order, skip reason when none is kept)."""
    acc = accounting if accounting is not None else ImageAccounting()
    kept: list[str] = []
    seen: set[str] = set()
    placeholders = invalid = 0
    for entry in entries:
        acc.entries += 1
        if not entry:
            acc.empty += 1
        elif not is_http_url(entry):
            acc.invalid += 1
            invalid += 1
        elif PLACEHOLDER_PATTERN.search(entry) or entry in shared:
            acc.placeholders += 1
            placeholders += 1
        elif entry in seen:
            acc.duplicates += 1
        else:
            seen.add(entry)
            kept.append(entry)
    if kept:
        return kept, None
    if placeholders:
        return [], SKIP_ONLY_PLACEHOLDERS
    if invalid:
        return [], SKIP_NO_VALID_URL
    return [], SKIP_NO_IMAGE


def read_catalog(
    path: str | Path,
    *,
    fraction: float | None = None,
    seed: int = 0,
    limit: int | None = None,
    max_zipped_bytes: int = MAX_ZIPPED_CSV_BYTES,
) -> CatalogReport:
    """Read a catalogue CSV or zip into products, accounting for every row and every image entry.

    ``fraction`` samples that share of the rows (reproducibly with ``seed``), as the seed notebook did;
    ``limit`` then keeps the first N rows. A CSV inside a zip may inflate to ``max_zipped_bytes`` at most.
    """
    if fraction is not None and not 0 < fraction <= 1:
        raise CatalogError(f"--fraction must be in (0, 1], got {fraction}")
    path = Path(path)
    with _open_catalog_bytes(path, max_zipped_bytes) as (handle, source):
        raw = handle.read()
    frame, encoding, malformed = _read_frame(raw, source)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise CatalogError(f"{source}: missing required column(s): {', '.join(missing)}")

    rows_read = len(frame)
    shared = frozenset(find_shared_placeholders(frame[IMAGE_COLUMN].tolist()))
    if fraction is not None and fraction < 1:
        frame = frame.sample(frac=fraction, random_state=seed)
    if limit is not None:
        frame = frame.head(limit)

    report = CatalogReport(
        source=source,
        encoding=encoding,
        rows_read=rows_read,
        rows_selected=len(frame),
        malformed_lines=malformed,
        products=[],
        shared_placeholders=sorted(shared),
    )
    seen_ids: set[str] = set()
    columns = list(REQUIRED_COLUMNS)
    for values in frame[columns].itertuples(index=False, name=None):
        row = dict(zip(columns, values, strict=True))
        product_id = row[ID_COLUMN].strip()
        entries = _split_images(row[IMAGE_COLUMN])
        if not product_id:
            report.skipped[SKIP_MISSING_ID] += 1
            report.images.entries += len(entries)
            report.images.in_skipped_rows += len(entries)
            continue
        if product_id in seen_ids:
            report.skipped[SKIP_DUPLICATE_ID] += 1
            report.images.entries += len(entries)
            report.images.in_skipped_rows += len(entries)
            continue
        seen_ids.add(product_id)
        urls, reason = usable_image_urls(entries, shared, report.images)
        if reason:
            report.skipped[reason] += 1
            continue
        report.images.kept += len(urls)
        report.products.append(
            Product.build(
                id=product_id,
                name=row[NAME_COLUMN],
                image_urls=urls,
                description=row[DESCRIPTION_COLUMN],
                category=row[CATEGORY_COLUMN],
                price=row[PRICE_COLUMN],
                product_url=row[URL_COLUMN],
            )
        )
    return report
