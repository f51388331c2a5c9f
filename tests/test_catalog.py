"""Catalogue reading: every row and every image entry accounted for, placeholders dropped by content, messy
prices and long fields tamed, zips, encodings and broken files handled with a one-line CatalogError."""

from __future__ import annotations

import csv
import subprocess
import sys
import uuid
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from lookalike.producer.catalog import (
    MIN_PRODUCTS_FOR_SHARED,
    SKIP_DUPLICATE_ID,
    SKIP_MISSING_ID,
    SKIP_NO_IMAGE,
    SKIP_NO_VALID_URL,
    SKIP_ONLY_PLACEHOLDERS,
    CatalogError,
    CatalogReport,
    read_catalog,
)
from lookalike.producer.product import (
    MAX_CATEGORY_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_NAME_CHARS,
    MAX_URL_CHARS,
    Product,
    parse_price,
    point_id_for,
)
from lookalike.testing.catalogs import AMAZON_COLUMNS, PLACEHOLDER_PATH, catalog_row, write_catalog

from conftest import SAMPLE_CSV

PLACEHOLDER = "https://images-na.ssl-images-amazon.com" + PLACEHOLDER_PATH
CDN = "https://images-na.ssl-images-amazon.com/images/I/"


def img(name: str) -> str:
    return f"{CDN}{name}.jpg"


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_accounted(report: CatalogReport) -> None:
    """The report's own bookkeeping: rows and image entries add up."""
    assert len(report.products) + sum(report.skipped.values()) == report.rows_selected
    acc = report.images
    assert acc.entries == acc.kept + acc.placeholders + acc.duplicates + acc.invalid + acc.empty + acc.in_skipped_rows
    assert acc.kept == report.image_count


def one_line_error(excinfo: pytest.ExceptionInfo[CatalogError]) -> str:
    message = str(excinfo.value)
    assert message.strip(), "the error message is empty"
    assert "\n" not in message and "\r" not in message, f"not one line: {message!r}"
    return message


# ------------------------------------------------------------------------------------------ the real sample
@pytest.fixture(scope="module")
def sample() -> CatalogReport:
    if not SAMPLE_CSV.is_file():  # pragma: no cover - ../shared/data sits beside the checkout
        pytest.skip(f"{SAMPLE_CSV} is missing")
    return read_catalog(SAMPLE_CSV)


@pytest.fixture(scope="module")
def sample_rows() -> list[dict[str, str]]:
    return read_rows(SAMPLE_CSV)


def test_sample_every_row_is_accounted_for(sample: CatalogReport, sample_rows: list[dict[str, str]]) -> None:
    assert len(sample_rows) == 1000
    assert sample.rows_read == 1000
    assert sample.rows_selected == 1000
    assert sample.malformed_lines == 0
    assert sample.encoding == "utf-8"
    assert len(sample.products) + sum(sample.skipped.values()) == sample.rows_selected
    assert len({p.id for p in sample.products}) == len(sample.products)
    assert_accounted(sample)


def test_sample_every_image_entry_is_accounted_for(sample: CatalogReport, sample_rows: list[dict[str, str]]) -> None:
    """The accounting matches an independent count made with the csv module."""
    entries = [entry.strip() for row in sample_rows for entry in row["Image"].split("|")]
    acc = sample.images
    assert acc.entries == len(entries)
    assert acc.entries == acc.kept + acc.placeholders + acc.duplicates + acc.invalid + acc.empty + acc.in_skipped_rows
    assert acc.placeholders == sum("transparent-pixel" in entry for entry in entries)
    assert acc.placeholders > 900  # most rows end with the shared placeholder

    expected_kept = 0
    expected_duplicates = 0
    for row in sample_rows:
        seen: set[str] = set()
        for entry in (e.strip() for e in row["Image"].split("|")):
            if not entry or "transparent-pixel" in entry:
                continue
            if entry in seen:
                expected_duplicates += 1
            else:
                seen.add(entry)
                expected_kept += 1
    assert acc.kept == expected_kept == sample.image_count
    assert acc.duplicates == expected_duplicates


def test_sample_placeholder_never_kept(sample: CatalogReport, sample_rows: list[dict[str, str]]) -> None:
    assert PLACEHOLDER in sample.shared_placeholders
    by_id = {row["Uniq Id"]: row for row in sample_rows}
    for product in sample.products:
        assert product.image_urls, product.id
        assert len(set(product.image_urls)) == len(product.image_urls), product.id
        assert not any("transparent-pixel" in url for url in product.image_urls), product.id
        # Kept URLs come from the row, in the row's order.
        row_entries = [e.strip() for e in by_id[product.id]["Image"].split("|")]
        positions = [row_entries.index(url) for url in product.image_urls]
        assert positions == sorted(positions), product.id


def test_sample_messy_prices(sample: CatalogReport, sample_rows: list[dict[str, str]]) -> None:
    by_price = {row["Selling Price"]: row["Uniq Id"] for row in sample_rows}
    products = {p.id: p for p in sample.products}

    ranged = products[by_price["$74.99 - $249.99"]]
    assert (ranged.price, ranged.price_value) == ("$74.99 - $249.99", 74.99)
    doubled = products[by_price["$6.94 $ 6 . 94"]]
    assert doubled.price_value == 6.94
    no_price = products[by_price["Total price:"]]
    assert (no_price.price, no_price.price_value) == (None, None)


# ------------------------------------------------------------------------------------------ placeholders
def test_placeholder_dropped_by_content_not_by_position(tmp_path: Path) -> None:
    rows = [
        catalog_row("first", "Placeholder first", [PLACEHOLDER, img("a1"), img("a2")]),
        catalog_row("middle", "Placeholder middle", [img("b1"), PLACEHOLDER, img("b2")]),
        catalog_row("last", "Placeholder last", [img("c1"), img("c2"), PLACEHOLDER]),
        # The seed notebook dropped the last entry blindly: a row without placeholder keeps all its images.
        catalog_row("none", "No placeholder", [img("d1"), img("d2")]),
        catalog_row(
            "sibling",
            "Other x-locale placeholder",
            [img("e1"), CDN.replace("/I/", "/G/01/x-locale/common/") + "grey-pixel.gif"],
        ),
    ]
    report = read_catalog(write_catalog(tmp_path / "c.csv", rows))
    urls = {p.id: p.image_urls for p in report.products}
    assert urls == {
        "first": (img("a1"), img("a2")),
        "middle": (img("b1"), img("b2")),
        "last": (img("c1"), img("c2")),
        "none": (img("d1"), img("d2")),
        "sibling": (img("e1"),),
    }
    assert report.images.placeholders == 4
    assert report.images.kept == 9
    assert_accounted(report)


def test_duplicates_within_a_product_are_dropped(tmp_path: Path) -> None:
    rows = [
        catalog_row("p1", "Dups", [img("a"), img("b"), img("a"), f" {img('b')} ", img("c")]),
        catalog_row("p2", "Same image as p1, another product", [img("a")]),
    ]
    report = read_catalog(write_catalog(tmp_path / "c.csv", rows))
    urls = {p.id: p.image_urls for p in report.products}
    assert urls == {"p1": (img("a"), img("b"), img("c")), "p2": (img("a"),)}
    assert report.images.duplicates == 2
    assert_accounted(report)


def _shared_catalog(path: Path, products: int, sharing: int, shared: str) -> Path:
    rows = []
    for i in range(products):
        urls = [img(f"own-{i}")]
        if i < sharing:
            urls.append(shared)
        rows.append(catalog_row(f"p{i:03d}", f"Product {i}", urls))
    return write_catalog(path, rows)


def test_unknown_placeholder_shared_by_most_products_is_dropped(tmp_path: Path) -> None:
    shared = "https://cdn.example.com/static/no-image-available.png"
    report = read_catalog(_shared_catalog(tmp_path / "c.csv", MIN_PRODUCTS_FOR_SHARED, 11, shared))
    assert report.shared_placeholders == [shared]
    assert len(report.products) == MIN_PRODUCTS_FOR_SHARED
    assert all(shared not in p.image_urls for p in report.products)
    assert report.images.placeholders == 11
    assert_accounted(report)


@pytest.mark.parametrize(
    ("products", "sharing"),
    [
        (MIN_PRODUCTS_FOR_SHARED, MIN_PRODUCTS_FOR_SHARED // 2),  # exactly half: not more than half
        (MIN_PRODUCTS_FOR_SHARED - 1, MIN_PRODUCTS_FOR_SHARED - 1),  # everyone, but too few products to judge
        (60, 3),  # a few products sharing an image (a brand banner, a variant shot)
    ],
)
def test_url_shared_by_few_products_is_kept(tmp_path: Path, products: int, sharing: int) -> None:
    shared = img("shared-variant-shot")
    report = read_catalog(_shared_catalog(tmp_path / "c.csv", products, sharing, shared))
    assert report.shared_placeholders == []
    assert sum(shared in p.image_urls for p in report.products) == sharing
    assert report.images.placeholders == 0
    assert_accounted(report)


def test_shared_rule_uses_the_whole_file_not_the_sample(tmp_path: Path) -> None:
    shared = "https://cdn.example.com/static/blank.gif"
    path = _shared_catalog(tmp_path / "c.csv", 40, 30, shared)
    report = read_catalog(path, fraction=0.25, seed=3)
    assert report.rows_selected == 10
    assert report.shared_placeholders == [shared]
    assert all(shared not in p.image_urls for p in report.products)
    assert_accounted(report)


def test_product_with_only_the_shared_url_is_skipped(tmp_path: Path) -> None:
    shared = "https://cdn.example.com/static/blank.gif"
    rows = [catalog_row(f"p{i}", f"P{i}", [img(f"x{i}"), shared]) for i in range(24)]
    rows.append(catalog_row("only", "Only the shared one", [shared, shared]))
    report = read_catalog(write_catalog(tmp_path / "c.csv", rows))
    assert report.skipped == Counter({SKIP_ONLY_PLACEHOLDERS: 1})
    assert "only" not in {p.id for p in report.products}
    assert_accounted(report)


# ------------------------------------------------------------------------------------------ prices and caps
@pytest.mark.parametrize(
    ("text", "price", "value"),
    [
        ("$74.99 - $249.99", "$74.99 - $249.99", 74.99),
        ("$6.94 $ 6 . 94", "$6.94", 6.94),
        ("Total price:", None, None),
        ("", None, None),
        ("$19.99", "$19.99", 19.99),
        ("$2,497.50", "$2,497.50", 2497.5),
    ],
)
def test_parse_price(text: str, price: str | None, value: float | None) -> None:
    assert parse_price(text) == (price, value)


LIST_PRICE_TEXT = (
    "$ 19 99 $39.95 #listPriceLegalMessageText { margin-left: 4px !important; } #listPriceLegalMessage "
    ".a-popover-trigger:hover { text-decoration: none !important; } #listPriceLegalMessage .a-icon-popover "
    "{ display: none !important; margin-left: 0px !important; margin-top: 6px !important; } Save $19.96 (50%)"
)


def test_parse_price_split_form_with_list_price_text() -> None:
    assert parse_price(LIST_PRICE_TEXT)[1] == 19.99


def test_prices_parse_through_the_catalogue(tmp_path: Path) -> None:
    rows = [
        catalog_row("range", "R", [img("r")], price="$74.99 - $249.99"),
        catalog_row("split", "S", [img("s")], price="$6.94 $ 6 . 94"),
        catalog_row("none", "N", [img("n")], price="Total price:"),
    ]
    products = {p.id: p for p in read_catalog(write_catalog(tmp_path / "c.csv", rows)).products}
    assert (products["range"].price, products["range"].price_value) == ("$74.99 - $249.99", 74.99)
    assert products["split"].price_value == 6.94
    assert (products["none"].price, products["none"].price_value) == (None, None)


def test_long_fields_are_truncated(tmp_path: Path) -> None:
    rows = [
        catalog_row(
            "long",
            "N" * (MAX_NAME_CHARS * 3),
            [img("l")],
            description="D" * (MAX_DESCRIPTION_CHARS * 4),
            category="C" * (MAX_CATEGORY_CHARS * 2),
        ),
        catalog_row(
            "exact",
            "n" * MAX_NAME_CHARS,
            [img("e")],
            description="d" * MAX_DESCRIPTION_CHARS,
            category="c" * MAX_CATEGORY_CHARS,
        ),
    ]
    products = {p.id: p for p in read_catalog(write_catalog(tmp_path / "c.csv", rows)).products}
    long = products["long"]
    assert len(long.name) == MAX_NAME_CHARS and long.name.startswith("NNN") and long.name.endswith("…")
    assert long.description is not None and len(long.description) == MAX_DESCRIPTION_CHARS
    assert long.description.endswith("…")
    assert long.category is not None and len(long.category) == MAX_CATEGORY_CHARS
    exact = products["exact"]
    assert exact.name == "n" * MAX_NAME_CHARS
    assert exact.description == "d" * MAX_DESCRIPTION_CHARS
    assert exact.category == "c" * MAX_CATEGORY_CHARS


def test_image_url_over_the_cap_is_invalid(tmp_path: Path) -> None:
    huge = "https://cdn.example.com/" + "x" * MAX_URL_CHARS + ".jpg"
    rows = [catalog_row("p", "P", [huge, img("fine")])]
    report = read_catalog(write_catalog(tmp_path / "c.csv", rows))
    assert report.products[0].image_urls == (img("fine"),)
    assert report.images.invalid == 1


def test_product_url_over_the_cap_is_not_turned_into_a_broken_link() -> None:
    long_url = "https://www.example.com/dp/" + "a" * MAX_URL_CHARS
    product = Product.build(id="p", name="P", image_urls=[img("p")], product_url=long_url)
    assert product.product_url in (None, long_url)


# ------------------------------------------------------------------------------------------ zip input
def _csv_bytes(tmp_path: Path) -> bytes:
    rows = [catalog_row("z1", "Zipped one", [img("z1")]), catalog_row("z2", "Zipped two", [img("z2"), PLACEHOLDER])]
    return write_catalog(tmp_path / "inner.csv", rows).read_bytes()


def test_zip_with_one_csv_at_depth(tmp_path: Path) -> None:
    archive = tmp_path / "catalog.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("home/", "")
        zf.writestr("home/sdf/", "")
        zf.writestr("home/sdf/x.csv", _csv_bytes(tmp_path))
        zf.writestr("home/sdf/readme.txt", "not a catalogue")
        zf.writestr("__MACOSX/home/sdf/._x.csv", b"\x00\x05\x16\x07 resource fork")
    report = read_catalog(archive)
    assert report.source.endswith("home/sdf/x.csv")
    assert [p.id for p in report.products] == ["z1", "z2"]
    assert report.products[1].image_urls == (img("z2"),)
    assert_accounted(report)


def test_zip_with_two_csvs_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "two.zip"
    data = _csv_bytes(tmp_path)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/first.csv", data)
        zf.writestr("b/second.csv", data)
    with pytest.raises(CatalogError) as excinfo:
        read_catalog(archive)
    message = one_line_error(excinfo)
    assert "2 CSV" in message and "first.csv" in message and "second.csv" in message


def test_zip_without_csv_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "none.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/catalog.json", "{}")
    with pytest.raises(CatalogError) as excinfo:
        read_catalog(archive)
    assert "no .csv" in one_line_error(excinfo)


# ------------------------------------------------------------------------------------------ unreadable input
def test_missing_columns_are_named(tmp_path: Path) -> None:
    columns = [c for c in AMAZON_COLUMNS if c not in ("Image", "Uniq Id")]
    path = write_catalog(tmp_path / "c.csv", [catalog_row("p", "P", [img("p")])], columns=columns)
    with pytest.raises(CatalogError) as excinfo:
        read_catalog(path)
    message = one_line_error(excinfo)
    assert "Image" in message and "Uniq Id" in message
    assert "Product Name" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"  \r\n\n \t\n", "empty"),
        (bytes(range(256)) * 64, "binary"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\x00" * 200, "binary"),
    ],
    ids=["empty", "blank", "binary", "png"],
)
def test_unreadable_files(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes(content)
    with pytest.raises(CatalogError) as excinfo:
        read_catalog(path)
    assert expected in one_line_error(excinfo)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as excinfo:
        read_catalog(tmp_path)
    assert "directory" in one_line_error(excinfo)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as excinfo:
        read_catalog(tmp_path / "nope.csv")
    message = one_line_error(excinfo)
    assert "nope.csv" in message and "no such file" in message


def test_unterminated_quote_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text(",".join(AMAZON_COLUMNS) + '\np1,"never closed\nmore\nlines\n', encoding="utf-8")
    with pytest.raises(CatalogError) as excinfo:
        read_catalog(path)
    one_line_error(excinfo)


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_bad_fraction_is_refused(tmp_path: Path, fraction: float) -> None:
    path = write_catalog(tmp_path / "c.csv", [catalog_row("p", "P", [img("p")])])
    with pytest.raises(CatalogError) as excinfo:
        read_catalog(path, fraction=fraction)
    assert "--fraction" in one_line_error(excinfo)


# ------------------------------------------------------------------------------------------ encodings
def _write_text(path: Path, rows: list[dict[str, str]], encoding: str) -> Path:
    text = write_catalog(path.with_suffix(".utf8.csv"), rows).read_text(encoding="utf-8")
    path.write_bytes(text.encode(encoding))
    return path


def test_latin1_catalogue(tmp_path: Path) -> None:
    rows = [catalog_row("p1", "Café crème brûlée set", [img("p1")], description="Señor ½ price")]
    path = _write_text(tmp_path / "latin1.csv", rows, "latin-1")
    assert "é".encode("latin-1") in path.read_bytes()
    report = read_catalog(path)
    assert report.encoding == "latin-1"
    assert report.products[0].name == "Café crème brûlée set"
    assert report.products[0].description == "Señor ½ price"


def test_utf8_with_bom(tmp_path: Path) -> None:
    rows = [catalog_row("p1", "Café", [img("p1")]), catalog_row("p2", "日本語の名前", [img("p2")])]
    path = _write_text(tmp_path / "bom.csv", rows, "utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    report = read_catalog(path)
    assert report.encoding == "utf-8"
    assert [(p.id, p.name) for p in report.products] == [("p1", "Café"), ("p2", "日本語の名前")]


# ------------------------------------------------------------------------------------------ rows
def test_embedded_newlines_and_quotes(tmp_path: Path) -> None:
    name = 'DB Longboards 41" Bamboo, "Pro"\nsecond line'
    description = 'Line one\r\nline two, with "quotes" and | pipes\n\nlast'
    rows = [
        catalog_row("p1", name, [img("p1")], description=description),
        catalog_row("p2", "Plain", [img("p2")]),
    ]
    report = read_catalog(write_catalog(tmp_path / "c.csv", rows))
    assert report.rows_read == 2 and report.malformed_lines == 0
    products = {p.id: p for p in report.products}
    assert products["p1"].name == name
    assert products["p1"].description == description
    assert products["p2"].image_urls == (img("p2"),)


def test_row_with_too_many_fields_is_skipped_and_counted(tmp_path: Path) -> None:
    rows = [catalog_row(f"p{i}", f"P{i}", [img(f"p{i}")]) for i in range(4)]
    lines = write_catalog(tmp_path / "c.csv", rows).read_text(encoding="utf-8").splitlines(keepends=True)
    bad = ",".join(["extra"] * (len(AMAZON_COLUMNS) + 3)) + "\n"
    path = tmp_path / "bad.csv"
    path.write_text("".join([*lines[:2], bad, *lines[2:4], bad, *lines[4:]]), encoding="utf-8")
    report = read_catalog(path)
    assert report.malformed_lines == 2
    assert report.rows_read == 4
    assert [p.id for p in report.products] == ["p0", "p1", "p2", "p3"]


def test_skip_reasons(tmp_path: Path) -> None:
    rows = [
        catalog_row("good", "Good", [img("g1"), img("g2")]),
        catalog_row("", "No id", [img("x1"), img("x2")]),
        catalog_row("   ", "Blank id", [img("x3")]),
        catalog_row("good", "Same id again", [img("g3"), img("g4"), img("g5")]),
        catalog_row("noimg", "No image", []),
        catalog_row("blanks", "Only separators", ["", " ", ""]),
        catalog_row("ph", "Only placeholders", [PLACEHOLDER, PLACEHOLDER]),
        catalog_row("bad", "Only invalid", ["not a url", "ftp://files.example.com/a.jpg", "javascript:alert(1)"]),
        catalog_row("mixed", "Placeholder and invalid", ["/relative/a.jpg", PLACEHOLDER]),
        catalog_row("ok2", "Good two", ["https://cdn.example.com/a.jpg", "data:image/png;base64,AAAA"]),
    ]
    report = read_catalog(write_catalog(tmp_path / "c.csv", rows))
    assert [p.id for p in report.products] == ["good", "ok2"]
    assert report.products[0].image_urls == (img("g1"), img("g2"))
    assert report.products[0].name == "Good"
    assert report.skipped == Counter(
        {
            SKIP_MISSING_ID: 2,
            SKIP_DUPLICATE_ID: 1,
            SKIP_NO_IMAGE: 2,
            SKIP_ONLY_PLACEHOLDERS: 2,
            SKIP_NO_VALID_URL: 1,
        }
    )
    acc = report.images
    assert acc.in_skipped_rows == 2 + 1 + 3  # missing ids and the duplicate row
    assert acc.kept == 3
    assert acc.placeholders == 3
    assert acc.invalid == 3 + 1 + 1
    assert acc.empty == 1 + 3
    assert acc.entries == 21
    assert_accounted(report)


# ------------------------------------------------------------------------------------------ sampling
@pytest.fixture
def hundred(tmp_path: Path) -> Path:
    rows = [catalog_row(f"p{i:03d}", f"Product {i}", [img(f"p{i}")]) for i in range(100)]
    return write_catalog(tmp_path / "hundred.csv", rows)


def test_fraction_is_reproducible_with_seed(hundred: Path) -> None:
    first = read_catalog(hundred, fraction=0.3, seed=7)
    again = read_catalog(hundred, fraction=0.3, seed=7)
    other = read_catalog(hundred, fraction=0.3, seed=8)
    ids = [p.id for p in first.products]
    assert ids == [p.id for p in again.products]
    assert len(ids) == 30 == first.rows_selected
    assert len(set(ids)) == 30
    assert set(ids) != {p.id for p in other.products}
    assert first.rows_read == 100
    assert_accounted(first)


def test_fraction_one_reads_everything_in_order(hundred: Path) -> None:
    report = read_catalog(hundred, fraction=1.0, seed=5)
    assert [p.id for p in report.products] == [f"p{i:03d}" for i in range(100)]


def test_limit(hundred: Path) -> None:
    report = read_catalog(hundred, limit=7)
    assert report.rows_read == 100
    assert report.rows_selected == 7
    assert [p.id for p in report.products] == [f"p{i:03d}" for i in range(7)]
    assert_accounted(report)


def test_limit_applies_after_fraction(hundred: Path) -> None:
    sampled = read_catalog(hundred, fraction=0.5, seed=1)
    limited = read_catalog(hundred, fraction=0.5, seed=1, limit=5)
    assert [p.id for p in limited.products] == [p.id for p in sampled.products][:5]
    assert limited.rows_selected == 5


# ------------------------------------------------------------------------------------------ point ids
def test_point_id_is_deterministic_and_distinct() -> None:
    product, url = "4c69b61db1fc16e7013b43fc926e502d", img("51ZwQkLFwbL")
    first = point_id_for(product, url)
    assert first == point_id_for(product, url)
    assert str(uuid.UUID(first)) == first
    # Pinned: the same on every machine, every run and every version, or re-runs would duplicate points.
    assert first == "5d5f88b5-33b0-585c-885e-88a4b42a9efe"
    ids = {
        first,
        point_id_for(product, img("other")),
        point_id_for("another-product", url),
        point_id_for(url, product),
        point_id_for(product + "x", url),
        point_id_for(product, url + "?"),
        point_id_for("ab", "c"),
        point_id_for("a", "bc"),
    }
    assert len(ids) == 8


def test_point_id_is_the_same_in_another_process() -> None:
    code = "from lookalike.producer.product import point_id_for; print(point_id_for('p1', 'https://x.com/a.jpg'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == point_id_for("p1", "https://x.com/a.jpg")


def test_zipped_csv_inflating_past_the_cap_is_refused_from_its_header(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("catalog.csv", _csv_bytes(tmp_path) + b"\n" * (4 << 20))  # 4 MiB of newlines: ~4 kB zipped
    assert archive.stat().st_size < 64 * 1024
    with pytest.raises(CatalogError) as excinfo:
        read_catalog(archive, max_zipped_bytes=1 << 20)
    message = one_line_error(excinfo)
    assert "catalog.csv" in message and "more than 1048576 bytes" in message


def test_zipped_csv_lying_about_its_size_is_refused_without_inflating_past_it(tmp_path: Path) -> None:
    # A header claiming less than the member inflates to passes the header check; zipfile then stops at the
    # declared size (and the read at the cap), and the CRC no longer matches: a one-line error either way.
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("catalog.csv", _csv_bytes(tmp_path) + b"\n" * (4 << 20))
    original = zipfile.ZipFile.infolist

    def understated(self: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
        infos = original(self)
        for info in infos:
            info.file_size = 1000
        return infos

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zipfile.ZipFile, "infolist", understated)
        with pytest.raises(CatalogError) as excinfo:
            read_catalog(archive, max_zipped_bytes=1 << 20)
    assert "catalog.csv" in one_line_error(excinfo)


def test_zipped_csv_under_the_cap_is_read(tmp_path: Path) -> None:
    data = _csv_bytes(tmp_path)
    archive = tmp_path / "fits.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("catalog.csv", data)
    assert [p.id for p in read_catalog(archive, max_zipped_bytes=len(data)).products] == ["z1", "z2"]
