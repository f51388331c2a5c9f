"""Catalogue CSVs in the Amazon product dataset 2020 schema, generated or localized to a test server."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lookalike.testing.images import product_bytes
from lookalike.testing.server import ImageServer, Route

AMAZON_COLUMNS = [
    "Uniq Id", "Product Name", "Brand Name", "Asin", "Category", "Upc Ean Code", "List Price", "Selling Price",
    "Quantity", "Model Number", "About Product", "Product Specification", "Technical Details", "Shipping Weight",
    "Product Dimensions", "Image", "Variants", "Sku", "Product Url", "Stock", "Product Details", "Dimensions",
    "Color", "Ingredients", "Direction To Use", "Is Amazon Seller", "Size Quantity Variant", "Product Description",
]  # fmt: skip

PLACEHOLDER_PATH = "/images/G/01/x-locale/common/transparent-pixel.jpg"
_HOST_RE = re.compile(r"^https?://[^/]+")


def catalog_row(
    product_id: str,
    name: str,
    image_urls: Iterable[str],
    *,
    category: str = "Toys & Games | Building Toys",
    price: str = "$19.99",
    description: str = "A product.",
    product_url: str | None = None,
) -> dict[str, str]:
    row = dict.fromkeys(AMAZON_COLUMNS, "")
    row.update(
        {
            "Uniq Id": product_id,
            "Product Name": name,
            "Category": category,
            "Selling Price": price,
            "About Product": description,
            "Image": "|".join(image_urls),
            "Product Url": product_url or f"https://www.example.com/dp/{product_id}",
            "Is Amazon Seller": "Y",
        }
    )
    return row


def write_catalog(path: Path, rows: Iterable[dict[str, Any]], columns: list[str] | None = None) -> Path:
    columns = columns or AMAZON_COLUMNS
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, quoting=csv.QUOTE_MINIMAL, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def localize_catalog(
    source: Path,
    target: Path,
    server: ImageServer,
    image_for: Callable[[str, int], bytes] | None = None,
) -> dict[str, str]:
    """Copy a real catalogue with every image URL's host rewritten to ``server``, which then serves a
    generated image under the same path. Returns original URL -> local URL. Never fetches the originals."""
    image_for = image_for or (lambda path, seed: product_bytes(seed))
    mapping: dict[str, str] = {}
    with source.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    for row in rows:
        local = []
        for entry in row["Image"].split("|"):
            url = entry.strip()
            if not url.startswith(("http://", "https://")):
                local.append(entry)
                continue
            if url not in mapping:
                path = _HOST_RE.sub("", url)
                body = product_bytes(10_000) if path == PLACEHOLDER_PATH else image_for(path, len(mapping))
                server.add(path, Route(body=body))
                mapping[url] = server.url(path)
            local.append(mapping[url])
        row["Image"] = "|".join(local)
    write_catalog(target, rows, columns)
    return mapping
