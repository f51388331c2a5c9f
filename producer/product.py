"""A catalogue product and the payload its points carry (their identity, ``point_id_for``, is shared state)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from lookalike.state import categories as category_paths
from lookalike.state.messages import point_id_for as point_id_for  # re-exported: identity is shared state

# Payload text is capped: a catalogue field can run to megabytes, Qdrant payloads should not.
MAX_NAME_CHARS = 1_000
MAX_DESCRIPTION_CHARS = 4_000
MAX_CATEGORY_CHARS = 500
MAX_URL_CHARS = 2_048


# "$19.99", "$2,497.50", "$20", and the split form "$ 19 99" / "$ 6 . 94" that the scraped pages produce.
_PRICE_RE = re.compile(r"\$\s*(\d{1,3}(?:,\d{3})+|\d+)(?:\s*(?:\.|\s)\s*(\d\d)(?!\d))?")


def _amounts(text: str) -> list[float]:
    return [float(f"{whole.replace(',', '')}.{cents or '00'}") for whole, cents in _PRICE_RE.findall(text)]


def parse_price(text: str | None) -> tuple[str | None, float | None]:
    """Clean a scraped price into (display text, lowest amount); (None, None) when it holds no price.

    The selling price is the first amount ("$ 19 99 $39.95 ... Save $19.96" is 19.99: what follows is the list
    price and the saving); a range "$74.99 - $249.99" keeps both ends.
    """
    if not text:
        return None, None
    low_text, dash, high_text = text.partition(" - ")
    low, high = _amounts(low_text), _amounts(high_text) if dash else []
    if not low:
        return None, None
    if high:
        return f"${low[-1]:,.2f} - ${high[0]:,.2f}", low[-1]
    return f"${low[0]:,.2f}", low[0]


def is_http_url(url: str) -> bool:
    if len(url) > MAX_URL_CHARS or any(ch.isspace() for ch in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _clip(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Product:
    id: str
    name: str
    image_urls: tuple[str, ...]
    description: str | None = None
    category: str | None = None
    price: str | None = None
    price_value: float | None = None
    product_url: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def build(
        cls,
        *,
        id: str,
        name: str | None,
        image_urls: list[str] | tuple[str, ...],
        description: str | None = None,
        category: str | None = None,
        price: str | None = None,
        product_url: str | None = None,
    ) -> Product:
        """A product with its text capped and its price parsed; image URLs are kept as given, in order."""
        price_text, price_value = parse_price(price)
        url = (product_url or "").strip()
        return cls(
            id=id.strip(),
            name=_clip(name, MAX_NAME_CHARS) or "",
            image_urls=tuple(image_urls),
            description=_clip(description, MAX_DESCRIPTION_CHARS),
            category=_clip(category, MAX_CATEGORY_CHARS),
            price=price_text,
            price_value=price_value,
            product_url=url if is_http_url(url) else None,
        )

    @property
    def categories(self) -> list[str]:
        """Every level of the category path ("A | B | C" -> ["A", "B", "C"]), as written."""
        return category_paths.levels(self.category)

    def payload(self) -> dict[str, Any]:
        """The product-level payload shared by every point of the product (the image URL is per point)."""
        return {
            "product_id": self.id,
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "categories": self.categories,
            # What a category filter matches: every level and every path from the top, normalized.
            "category_keys": category_paths.keys(self.category),
            "price": self.price,
            "price_value": self.price_value,
            "product_url": self.product_url,
        }

    def to_dict(self) -> dict[str, Any]:
        """The event form of the product (see README, "Catalogue change events")."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "price": self.price,
            "product_url": self.product_url,
            "image_urls": list(self.image_urls),
        }
