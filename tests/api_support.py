"""What the API tests share: a deterministic fake search backend, its little catalogue, and a real uvicorn.

The fake answers like the real one (a :class:`~lookalike.api.backend.SearchBackend`), from a catalogue of
solid-colour products: a photo is decoded by the workers' own decode stage (so a non-image, a bomb or a
truncated file is refused with the pipeline's own reasons) and ranked by its mean colour; words by the words
of the names and categories; "more like this" by the product's colour, itself left out. Every answer is a
pure function of the request, so the tests can say which product comes first.
"""

from __future__ import annotations

import contextlib
import io
import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import uvicorn
from PIL import Image

from lookalike.api.backend import READINESS_CHECKS
from lookalike.app.admission import Admission
from lookalike.config.settings import Settings, get_settings
from lookalike.state.search import KEYWORD, QueryRejected, SearchHit, SearchRequest, SearchResponse
from lookalike.testing.server import ImageServer, Route
from lookalike.worker.decode import ImageRejected, decode_image
from lookalike.worker.prepare import QueryPreparer


@dataclass(frozen=True)
class Product:
    product_id: str
    name: str
    category: str
    price: float
    colour: tuple[int, int, int]


CATALOGUE = (
    Product("p-red-sneaker", "Red Canvas Sneaker", "Clothing | Shoes | Sneakers", 49.99, (220, 30, 30)),
    Product("p-crimson-boot", "Crimson Leather Boot", "Clothing | Shoes | Boots", 129.00, (170, 25, 45)),
    Product("p-blue-jacket", "Blue Denim Jacket", "Clothing | Jackets", 89.50, (30, 60, 200)),
    Product("p-navy-coat", "Navy Wool Coat", "Clothing | Jackets", 199.00, (20, 30, 110)),
    Product("p-green-hose", "Green Garden Hose", "Home & Garden | Garden", 24.95, (30, 170, 60)),
    Product("p-olive-pot", "Olive Plant Pot", "Home & Garden | Garden", 15.00, (110, 130, 40)),
    Product("p-yellow-hat", "Yellow Rain Hat", "Clothing | Hats", 19.99, (240, 220, 30)),
    Product("p-orange-kettle", "Orange Kettle", "Home & Garden | Kitchen", 39.00, (240, 140, 20)),
    Product("p-black-lamp", "Black Desk Lamp", "Home & Garden | Lighting", 59.99, (20, 20, 20)),
    Product("p-white-mug", "White Coffee Mug", "Home & Garden | Kitchen", 9.99, (245, 245, 245)),
    Product("p-purple-mat", "Purple Yoga Mat", "Sports & Outdoors | Yoga", 29.99, (130, 40, 160)),
    Product("p-pink-bottle", "Pink Water Bottle", "Sports & Outdoors | Hydration", 14.50, (240, 120, 180)),
    # Markup in catalogue text: the page must show it as text, never as HTML.
    Product("p-grey-scarf", '<img src=x onerror="window.pwned=1"><b>Grey</b> Scarf', "Clothing | Scarves", 22.00,
            (128, 128, 128)),
)
BY_ID = {product.product_id: product for product in CATALOGUE}
MAX_DISTANCE = math.sqrt(3) * 255


def colour_png(colour: tuple[int, int, int], size: tuple[int, int] = (96, 96)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def photo_of(product_id: str) -> bytes:
    """A photo the fake (and a colour-faithful model) recognises as ``product_id``: a JPEG of its colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), BY_ID[product_id].colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@dataclass
class FakeBackend:
    """Deterministic answers over :data:`CATALOGUE`; ``fail`` makes every search raise it instead."""

    image_base: str = "https://images.example.com/catalogue"
    fail: Exception | None = None
    ready: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(READINESS_CHECKS, True))
    delay: float = 0.0
    requests: list[SearchRequest] = field(default_factory=list)
    max_image_bytes: int = Settings.model_fields["query_max_bytes"].default

    admission: Admission = field(default_factory=lambda: Admission(16))

    def readiness(self) -> dict[str, bool]:
        return dict(self.ready)

    def admit(self) -> AbstractContextManager[None]:
        """The real admission control, with the bound this fake is given."""
        return self.admission.admit()

    def reduce_upload(self, file: BinaryIO) -> bytes:
        """The real reduction of an upload (the decoder, the transport JPEG), as the gateway does it."""
        return QueryPreparer(get_settings()).reduce_upload(file)

    def search(self, request: SearchRequest) -> dict[str, Any]:
        """Validates like the real backend (the gateway), then answers from the catalogue as data."""
        request.validate(max_image_bytes=self.max_image_bytes)
        self.requests.append(request)
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        if request.image is not None:
            scored = self._by_colour(self._mean_colour(request.image), matched="image")
        elif request.image_url is not None:
            known = {self.image_url(p): p for p in CATALOGUE}
            if request.image_url not in known:
                raise QueryRejected("http_404", f"{request.image_url} answered 404")
            scored = self._by_colour(known[request.image_url].colour, matched="image")
        elif request.text is not None:
            scored = self._by_words(request.text)
        else:
            assert request.product_id is not None
            product = BY_ID.get(request.product_id)
            if product is None:
                raise QueryRejected("unknown_product", f"no product {request.product_id!r} in the index")
            scored = [hit for hit in self._by_colour(product.colour, matched="image") if hit[0] is not product]
        kept = [(product, score, how) for product, score, how in scored if self._passes(request, product, score)]
        facets = None
        if request.facets:
            facets = dict(Counter(product.category.split(" | ")[0] for product, _, _ in kept))
        window = kept[request.offset : request.offset + request.k]
        hits = tuple(self._hit(product, score, matched) for product, score, matched in window)
        return SearchResponse(hits, facets).to_data()

    # ------------------------------------------------------------------------------------------ helpers
    def image_url(self, product: Product) -> str:
        return f"{self.image_base}/{product.product_id}.png"

    def _hit(self, product: Product, score: float, matched: str) -> SearchHit:
        return SearchHit(
            product_id=product.product_id,
            name=product.name,
            score=score,
            image_url=self.image_url(product),
            product_url=f"https://shop.example.com/dp/{product.product_id}",
            category=product.category,
            price=f"${product.price:.2f}",
            price_value=product.price,
            matched=(matched,),
        )

    @staticmethod
    def _mean_colour(data: bytes) -> tuple[float, float, float]:
        try:
            image = decode_image(data, max_pixels=4_000_000, formats=("JPEG", "PNG", "GIF", "WEBP", "BMP"))
        except ImageRejected as exc:
            raise QueryRejected(exc.reason, exc.detail) from exc
        small = image.resize((1, 1), Image.Resampling.BOX)
        pixel = small.getpixel((0, 0))
        assert isinstance(pixel, tuple)
        return float(pixel[0]), float(pixel[1]), float(pixel[2])

    @staticmethod
    def _by_colour(colour: tuple[float, ...], matched: str) -> list[tuple[Product, float, str]]:
        scored = [(p, 1 - math.dist(colour, p.colour) / MAX_DISTANCE, matched) for p in CATALOGUE]
        return sorted(scored, key=lambda item: (-item[1], item[0].product_id))

    @staticmethod
    def _by_words(text: str) -> list[tuple[Product, float, str]]:
        words = {word for word in text.lower().split() if word}
        scored = []
        for product in CATALOGUE:
            vocabulary = set(f"{product.name} {product.category}".lower().replace("|", " ").split())
            hits = len(words & vocabulary)
            if hits:
                scored.append((product, hits / len(words), KEYWORD))
        return sorted(scored, key=lambda item: (-item[1], item[0].product_id))

    @staticmethod
    def _passes(request: SearchRequest, product: Product, score: float) -> bool:
        filters = request.filters
        if filters.category is not None:
            levels = {level.strip().lower() for level in product.category.split("|")}
            if filters.category.strip().lower() not in levels:
                return False
        if filters.min_price is not None and product.price < filters.min_price:
            return False
        if filters.max_price is not None and product.price > filters.max_price:
            return False
        return filters.min_score is None or score >= filters.min_score


def catalogue_images(server: ImageServer, backend: FakeBackend) -> None:
    """Serve every product's thumbnail from ``server`` and point the backend's image URLs at it."""
    backend.image_base = server.url("/catalogue")
    for product in CATALOGUE:
        route = Route(body=colour_png(product.colour), content_type="image/png")
        server.add(f"/catalogue/{product.product_id}.png", route)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(app: object) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
