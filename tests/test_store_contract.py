"""One contract, two engines: every :class:`~lookalike.worker.store.VectorStore` behaves the same.

* ``edge``  - :class:`EdgeStore`, qdrant-edge-py on a directory (the embedded default);
* ``local`` - :class:`ClientStore` in qdrant-client's local mode, which speaks the server API and so covers the
  server code path without a server.

Plus the engine-specific bits (the edge directory lock) and :func:`open_store`'s choice of engine.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike.config.settings import Settings
from lookalike.producer.product import Product, point_id_for
from lookalike.state.categories import keys as category_keys
from lookalike.worker.store import (
    SCROLL_PAGE,
    ClientStore,
    EdgeStore,
    Hit,
    Narrowing,
    PointRecord,
    StoreError,
    StoreLocked,
    StoreUnavailable,
    VectorStore,
    open_store,
    present,
)

DIM = 8
COLLECTION = "products"

ENGINES: dict[str, Callable[[Path], VectorStore]] = {
    "edge": lambda root: EdgeStore(root, COLLECTION),
    "local": lambda root: ClientStore(COLLECTION, path=root / "local"),
}

Opener = Callable[[], VectorStore]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(params=sorted(ENGINES))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens a (new instance of the) store of one engine on this test's directory; closes them all after."""
    opened: list[VectorStore] = []

    def open_() -> VectorStore:
        store = ENGINES[request.param](tmp_path)
        opened.append(store)
        return store

    yield open_
    for store in reversed(opened):
        store.close()


@pytest.fixture
def store(opener: Opener) -> VectorStore:
    """A store whose collection exists (cosine, ``DIM``) and is empty."""
    opened = opener()
    opened.ensure_collection(DIM)
    return opened


# ------------------------------------------------------------------------------------------------ helpers
def unit(i: int) -> list[float]:
    """A basis vector: points built on different axes are orthogonal (cosine 0)."""
    vector = [0.0] * DIM
    vector[i % DIM] = 1.0
    return vector


def vector_for(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIM)


def product(product_id: str, category: str | None = "Toys & Games | Puzzles | Jigsaw", **kwargs: Any) -> Product:
    return Product.build(
        id=product_id,
        name=kwargs.pop("name", f"Product {product_id}"),
        image_urls=kwargs.pop("image_urls", [f"https://img.example/{product_id}/0.jpg"]),
        category=category,
        **kwargs,
    )


def records(item: Product, vectors: list[Any] | None = None) -> list[PointRecord]:
    """One point per image URL of the product, as the pipeline builds them, with the payload in its stored
    form (no None values; test_upsert_round_trips_payloads_exactly covers how None values are dropped)."""
    vectors = vectors or [vector_for(zlib.crc32(f"{item.id}\x1f{url}".encode())) for url in item.image_urls]
    return [
        PointRecord(point_id_for(item.id, url), vector, present({**item.payload(), "image_url": url}))
        for url, vector in zip(item.image_urls, vectors, strict=True)
    ]


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def search(store: VectorStore, vector: Any, limit: int, category: str | None = None) -> list[Hit]:
    """The plainest dense query: nearest points, optionally in one category."""
    return store.query_dense(vector, limit, Narrowing(category=category))


def payloads(store: VectorStore, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Payloads of the given ids that exist, read the way the pipeline reads them (scroll)."""
    wanted = set(ids)
    return {point_id: payload for point_id, payload, _vector in store.scroll() if point_id in wanted}


def product_ids(store: VectorStore) -> set[str]:
    return {str(payload.get("product_id")) for _id, payload, _vector in store.scroll()}


def scrolled(store: VectorStore, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """Scroll into id -> payload, failing on an id seen twice."""
    seen: dict[str, dict[str, Any]] = {}
    for point_id, payload, _vector in store.scroll(**kwargs):
        assert point_id not in seen, f"scroll yielded {point_id} twice"
        seen[point_id] = payload
    return seen


UNICODE = Product.build(
    id="B0-ünï",
    name="Café ☕ 日本語 — “quoted” 🧸",
    image_urls=["https://img.example/ünï/0.jpg", "https://img.example/ünï/1.jpg"],
    description=None,
    category="Jouets | Puzzles & Casse-têtes | 3D",
    price="$ 19 99",
    product_url=None,
)


# ---------------------------------------------------------------------------------------- collection
def test_ensure_collection_creates_and_is_idempotent(opener: Opener) -> None:
    store = opener()
    assert store.count() == 0
    store.ensure_collection(DIM)
    store.ensure_collection(DIM)
    store.upsert(records(product("p1")))
    store.ensure_collection(DIM)
    assert store.count() == 1
    # Cosine: a scaled copy of a stored vector is the same direction.
    stored = records(product("p1"))[0]
    [hit] = search(store, np.asarray(stored.vector) * 7.5, limit=5)
    assert hit.id == stored.id
    assert hit.score == pytest.approx(1.0, abs=1e-5)


def test_ensure_collection_with_another_dim_raises(store: VectorStore, opener: Opener) -> None:
    with pytest.raises(StoreError, match=f"{DIM}-d"):
        store.ensure_collection(DIM * 2)
    store.upsert(records(product("p1")))
    store.close()
    reopened = opener()
    with pytest.raises(StoreError, match="use another LOOKALIKE_COLLECTION"):
        reopened.ensure_collection(DIM + 1)
    reopened.ensure_collection(DIM)
    assert reopened.count() == 1


# ---------------------------------------------------------------------------------------- upsert / read
def test_upsert_round_trips_payloads_exactly(store: VectorStore) -> None:
    points = records(UNICODE) + records(product("p2", category=None, price="$2,497.50"))
    points.append(
        PointRecord(
            point_id_for("odd", "https://img.example/odd.jpg"),
            vector_for(3),
            {
                "product_id": "odd",
                "none": None,
                "empty_list": [],
                "categories": ["Ä", "b c", "日本"],
                "int": 3,
                "float": 0.25,
                "bool": False,
                "nested": {"k": [1, None, "ü"]},
                "image_url": "https://img.example/odd.jpg",
            },
        )
    )
    store.upsert(points)
    # Top-level None values are not stored: "missing" is how the store says "no value".
    expected = {p.id: {k: v for k, v in p.payload.items() if v is not None} for p in points}

    assert store.count() == len(points)
    assert store.count(product_id=UNICODE.id) == 2
    assert payloads(store, list(expected)) == expected
    assert scrolled(store) == expected
    assert product_ids(store) == {UNICODE.id, "p2", "odd"}
    unicode_payload = expected[point_id_for(UNICODE.id, UNICODE.image_urls[0])]
    assert "description" not in unicode_payload
    assert expected[point_id_for("odd", "https://img.example/odd.jpg")]["nested"] == {"k": [1, None, "ü"]}
    assert unicode_payload["categories"] == ["Jouets", "Puzzles & Casse-têtes", "3D"]
    assert unicode_payload["price_value"] == 19.99


def test_upsert_same_ids_replaces_without_duplicates(store: VectorStore) -> None:
    first = records(product("p1", image_urls=["https://img.example/a.jpg", "https://img.example/b.jpg"]))
    store.upsert(first)
    assert store.count() == 2
    renamed = product("p1", name="Renamed", category="Other", image_urls=[u.payload["image_url"] for u in first])
    second = [
        PointRecord(
            p.id, vector_for(100 + i), {"product_id": "p1", "name": "Renamed", "image_url": p.payload["image_url"]}
        )
        for i, p in enumerate(records(renamed))
    ]
    store.upsert(second)
    store.upsert(second)
    assert store.count() == 2
    assert payloads(store, [p.id for p in first]) == {p.id: p.payload for p in second}
    # The vector is replaced too: the new vector is what now scores 1.0.
    [best, *_] = search(store, second[0].vector, limit=2)
    assert best.id == second[0].id
    assert best.score == pytest.approx(1.0, abs=1e-5)


def test_upsert_nothing_is_a_no_op(store: VectorStore) -> None:
    store.upsert([])
    assert store.count() == 0


def test_scroll_with_vectors_returns_the_direction(store: VectorStore) -> None:
    points = records(product("p1", image_urls=["https://img.example/a.jpg", "https://img.example/b.jpg"]))
    store.upsert(points)
    by_id = {p.id: p for p in points}
    rows = list(store.scroll(with_vectors=True))
    assert len(rows) == 2
    for point_id, payload, vector in rows:
        assert payload == by_id[point_id].payload
        assert vector is not None and len(vector) == DIM
        assert cosine(vector, by_id[point_id].vector) == pytest.approx(1.0, abs=1e-5)
    assert all(vector is None for _id, _payload, vector in store.scroll())


# ---------------------------------------------------------------------------------------- search
def test_search_is_best_first_cosine_and_respects_limit(store: VectorStore) -> None:
    points = [
        PointRecord(point_id_for(f"p{i}", f"https://img.example/{i}.jpg"), unit(i), {"product_id": f"p{i}"})
        for i in range(DIM)
    ]
    store.upsert(points)
    # Mostly axis 0, then 1, then 2: expected cosines are query . axis / |query|.
    query = [4.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    hits = search(store, query, limit=3)
    assert [h.id for h in hits] == [points[0].id, points[1].id, points[2].id]
    norm = float(np.linalg.norm(query))
    assert [h.score for h in hits] == pytest.approx([4 / norm, 2 / norm, 1 / norm], abs=1e-5)
    assert [h.payload for h in hits] == [points[0].payload, points[1].payload, points[2].payload]

    assert len(search(store, query, limit=1)) == 1
    everything = search(store, query, limit=100)
    assert len(everything) == DIM
    scores = [h.score for h in everything]
    assert scores == sorted(scores, reverse=True)

    [exact] = search(store, unit(5), limit=1)
    assert exact.id == points[5].id
    assert exact.score == pytest.approx(1.0, abs=1e-5)


def test_search_category_matches_any_level_or_a_path_from_the_top_in_any_case(store: VectorStore) -> None:
    toys = product("toy", category="Toys & Games | Puzzles | Jigsaw")
    games = product("game", category="Toys & Games | Board Games")
    kitchen = product("pan", category="Home & Kitchen | Cookware")
    bare = product("bare", category=None)
    points = [records(item, [unit(i)])[0] for i, item in enumerate([toys, games, kitchen, bare])]
    store.upsert(points)
    query = [1.0] * DIM

    def found(category: str | None) -> set[str]:
        return {h.payload["product_id"] for h in search(store, query, limit=10, category=category)}

    assert found(None) == {"toy", "game", "pan", "bare"}
    assert found("Toys & Games") == {"toy", "game"}
    assert found("Puzzles") == {"toy"}
    assert found("Jigsaw") == {"toy"}
    assert found("Cookware") == {"pan"}
    # A path from the top, at any depth, in any case and spacing (category_keys, written at index time).
    assert found("Toys & Games | Puzzles | Jigsaw") == {"toy"}
    assert found("toys & games|puzzles") == {"toy"}
    assert found("  TOYS &  games  ") == {"toy", "game"}
    assert found("puzzles") == {"toy"}
    assert found("Puzzles | Jigsaw") == set(), "a path is read from the top"
    assert found("Toys & Games | Cookware") == set()
    assert found("Toys") == set(), "a level is a whole level"
    assert found("Garden") == set()
    assert len(search(store, query, limit=1, category="Toys & Games")) == 1


# ---------------------------------------------------------------------------------------- payload updates
def test_set_product_payload_overwrites_given_keys_of_one_product(store: VectorStore) -> None:
    p1 = product("p1", image_urls=["https://img.example/p1/a.jpg", "https://img.example/p1/b.jpg"], price="$5.00")
    p2 = product("p2", image_urls=["https://img.example/p2/a.jpg"], price="$7.00")
    store.upsert(records(p1) + records(p2))
    before = scrolled(store)

    changes = {
        "name": "New name ✓", "price": "$4.00", "price_value": 4.0, "categories": ["Sale"], "category": "Sale",
        "category_keys": ["sale"],
    }  # fmt: skip
    store.set_product_payload("p1", changes)

    after = scrolled(store)
    assert set(after) == set(before)
    for point_id, payload in after.items():
        if before[point_id]["product_id"] == "p1":
            assert payload == {**before[point_id], **changes}
            assert payload["image_url"] == before[point_id]["image_url"]
        else:
            assert payload == before[point_id]
    # The filter follows the new payload.
    assert {h.payload["product_id"] for h in search(store, [1.0] * DIM, limit=10, category="Sale")} == {"p1"}
    assert {h.payload["product_id"] for h in search(store, [1.0] * DIM, limit=10, category="Puzzles")} == {"p2"}

    store.set_product_payload("missing", {"name": "x"})
    assert scrolled(store) == after


def test_set_product_payload_with_none_removes_those_keys_like_upsert(store: VectorStore) -> None:
    item = product("p1", price="$5.00", product_url="https://shop.example/p1")
    store.upsert(records(item))
    [point_id] = [p.id for p in records(item)]
    before = payloads(store, [point_id])[point_id]
    assert before["price"] == "$5.00"

    # What reconcile sends when a catalogue update clears the price and the product URL.
    changes = {"price": None, "price_value": None, "product_url": None}
    store.set_product_payload("p1", changes)

    after = payloads(store, [point_id])[point_id]
    assert after == {k: v for k, v in before.items() if k not in changes}
    # ... which is exactly what a fresh upsert of the updated product stores.
    cleared = product("p1", price=None, product_url=None)
    store.upsert(records(cleared))
    assert payloads(store, [point_id])[point_id] == after


def test_set_point_payload_overwrites_given_keys_of_those_points_only(store: VectorStore) -> None:
    points = records(product("p1", image_urls=[f"https://img.example/p1/{i}.jpg" for i in range(3)]))
    store.upsert(points)
    before = scrolled(store)
    store.set_point_payload([points[0].id, points[2].id], {"primary": 1, "name": "Flagged"})
    after = scrolled(store)
    flagged = {"primary": 1, "name": "Flagged"}
    assert after[points[0].id] == {**before[points[0].id], **flagged}
    assert after[points[2].id] == {**before[points[2].id], **flagged}
    assert after[points[1].id] == before[points[1].id]
    store.set_point_payload([], {"primary": 0})
    assert scrolled(store) == after


# ---------------------------------------------------------------------------------------- deletes
def test_delete_ids_deletes_exactly_those(store: VectorStore) -> None:
    points = records(product("p1", image_urls=[f"https://img.example/p1/{i}.jpg" for i in range(4)]))
    points += records(product("p2"))
    store.upsert(points)
    gone = [points[1].id, points[4].id]
    store.delete_ids(gone)
    assert set(scrolled(store)) == {p.id for p in points} - set(gone)
    assert store.count() == 3
    assert payloads(store, gone) == {}
    assert not {h.id for h in search(store, points[1].vector, limit=10)} & set(gone)
    store.delete_ids([])
    store.delete_ids([point_id_for("nope", "https://img.example/nope.jpg")])
    assert store.count() == 3


def test_delete_product_deletes_all_its_points_and_no_others(store: VectorStore) -> None:
    p1 = records(product("p1", image_urls=[f"https://img.example/p1/{i}.jpg" for i in range(3)]))
    p2 = records(product("p2", image_urls=[f"https://img.example/p2/{i}.jpg" for i in range(2)]))
    p10 = records(product("p10"))  # a product id that has "p1" as a prefix stays
    store.upsert(p1 + p2 + p10)
    store.delete_product("p1")
    assert store.count() == 3
    assert store.count(product_id="p1") == 0
    assert set(scrolled(store)) == {p.id for p in p2 + p10}
    assert product_ids(store) == {"p2", "p10"}
    assert all(h.payload["product_id"] != "p1" for h in search(store, [1.0] * DIM, limit=10))
    store.delete_product("p1")
    store.delete_product("never-there")
    assert store.count() == 3


# ---------------------------------------------------------------------------------------- scroll
def test_scroll_filters_by_product(store: VectorStore) -> None:
    p1 = records(product("p1", image_urls=[f"https://img.example/p1/{i}.jpg" for i in range(3)]))
    p2 = records(product("p2"))
    store.upsert(p1 + p2)
    assert scrolled(store, product_id="p1") == {p.id: p.payload for p in p1}
    assert scrolled(store, product_id="p2") == {p.id: p.payload for p in p2}
    assert scrolled(store, product_id="nope") == {}
    assert store.count(product_id="p1") == 3


def test_scroll_pages_over_more_than_one_page(store: VectorStore) -> None:
    total, big = int(2.5 * SCROLL_PAGE), int(1.5 * SCROLL_PAGE)
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(total, DIM))
    points = [
        PointRecord(
            point_id_for("big" if i < big else f"small-{i % 50}", f"https://img.example/{i}.jpg"),
            vectors[i],
            {"product_id": "big" if i < big else f"small-{i % 50}", "n": i},
        )
        for i in range(total)
    ]
    store.upsert(points)
    assert store.count() == total
    everything = scrolled(store)
    assert len(everything) == total
    assert everything == {p.id: p.payload for p in points}
    filtered = scrolled(store, product_id="big")
    assert len(filtered) == big
    assert sorted(payload["n"] for payload in filtered.values()) == list(range(big))
    assert store.count(product_id="big") == big


def test_scroll_page_walks_every_point_once_and_resumes_from_a_saved_offset(store: VectorStore) -> None:
    total = 25
    points = [
        PointRecord(point_id_for(f"p{i}", f"https://img.example/{i}.jpg"), vector_for(i), {"product_id": f"p{i}"})
        for i in range(total)
    ]
    store.upsert(points)
    seen: list[str] = []
    offsets: list[str | None] = [None]
    offset: str | None = None
    while True:
        page, offset = store.scroll_page(offset, 10)
        assert len(page) <= 10
        for point_id, payload, vector in page:
            assert payload["product_id"] == f"p{int(payload['product_id'][1:])}"
            assert vector is not None and len(vector) == DIM
            seen.append(point_id)
        if offset is None:
            break
        offsets.append(offset)
    assert len(offsets) == 3
    assert sorted(seen) == sorted(p.id for p in points) and len(seen) == total
    # A reader that stopped after the first page starts again from the offset it saved.
    resumed, _ = store.scroll_page(offsets[1], 10)
    assert [point_id for point_id, _p, _v in resumed] == seen[10:20]


def test_a_batch_of_dense_queries_answers_each_with_its_own_narrowing(store: VectorStore) -> None:
    from lookalike.worker.store import Narrowing

    shop(store)
    answers = store.query_dense_batch(
        [unit(0), unit(0), unit(5)],
        10,
        [Narrowing(), Narrowing(exclude_product="kettle"), Narrowing()],
        score_threshold=0.5,
    )
    single = store.query_dense(unit(0), 10, Narrowing(), score_threshold=0.5)
    assert [hit.id for hit in answers[0]] == [hit.id for hit in single]
    assert products(answers[0]) == ["kettle"]
    assert "kettle" not in products(answers[1])
    assert all(hit.score >= 0.5 for answer in answers for hit in answer)
    assert store.query_dense_batch([], 10, [], score_threshold=0.5) == []


# ---------------------------------------------------------------------------------------- missing collection
def test_a_store_without_collection_is_empty_not_an_error(opener: Opener) -> None:
    from lookalike.worker.store import Narrowing

    store = opener()
    some_id = point_id_for("p1", "https://img.example/p1.jpg")
    assert search(store, [1.0] * DIM, limit=5) == []
    assert search(store, [1.0] * DIM, limit=5, category="Toys") == []
    assert store.count() == 0
    assert store.count(product_id="p1") == 0
    assert list(store.scroll()) == []
    assert list(store.scroll(product_id="p1", with_vectors=True)) == []
    assert payloads(store, [some_id]) == {}
    assert product_ids(store) == set()
    assert store.scroll_page(None, 10) == ([], None)
    assert store.query_dense_batch([[1.0] * DIM], 5, [Narrowing()], score_threshold=0.0) == [[]]
    store.delete_product("p1")
    store.delete_ids([some_id])
    store.set_product_payload("p1", {"name": "x"})
    store.optimize()
    assert store.count() == 0


# ---------------------------------------------------------------------------------------- lifecycle
def test_close_and_reopen_keeps_the_data(store: VectorStore, opener: Opener) -> None:
    points = records(UNICODE) + records(product("p2"))
    store.upsert(points)
    store.set_product_payload("p2", {"name": "after update"})
    store.delete_ids([points[0].id])
    expected = {p.id: p.payload for p in points[1:]}
    expected[points[2].id] = {**expected[points[2].id], "name": "after update"}
    store.close()

    reopened = opener()
    assert reopened.count() == 2
    assert payloads(reopened, [p.id for p in points]) == expected
    assert scrolled(reopened) == expected
    [hit, *_] = search(reopened, points[1].vector, limit=2)
    assert hit.id == points[1].id
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    reopened.ensure_collection(DIM)
    reopened.upsert(records(product("p3")))
    assert reopened.count() == 3


def test_optimize_runs(store: VectorStore) -> None:
    points = [
        PointRecord(point_id_for(f"p{i}", f"https://img.example/{i}.jpg"), vector_for(i), {"product_id": f"p{i}"})
        for i in range(200)
    ]
    store.upsert(points)
    store.optimize()
    store.optimize()
    assert store.count() == 200
    [hit] = search(store, points[42].vector, limit=1)
    assert hit.id == points[42].id


def test_an_edge_store_briefly_locked_is_opened_once_released(tmp_path: Path) -> None:
    import threading

    first = EdgeStore(tmp_path, COLLECTION)
    first.ensure_collection(DIM)
    first.upsert(records(product("p1")))
    closer = threading.Timer(1.0, first.close)  # the previous owner, still shutting down
    closer.start()
    started = time.monotonic()
    second = EdgeStore(tmp_path, COLLECTION, lock_wait=10)
    try:
        assert 0.8 <= time.monotonic() - started < 10
        assert second.count() == 1
    finally:
        second.close()
        closer.join()


def test_edge_store_is_locked_while_open(tmp_path: Path) -> None:
    first = EdgeStore(tmp_path, COLLECTION)
    first.ensure_collection(DIM)
    first.upsert(records(product("p1")))
    try:
        with pytest.raises(StoreLocked, match="another process"):
            EdgeStore(tmp_path, COLLECTION, lock_wait=0.5)
        assert first.count() == 1  # the failed open did not disturb the first
    finally:
        first.close()
    second = EdgeStore(tmp_path, COLLECTION)  # released on close
    try:
        assert second.count() == 1
    finally:
        second.close()


# ---------------------------------------------------------------------------------------- open_store
@pytest.fixture
def clean_store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "LOOKALIKE_QDRANT_URL",
        "LOOKALIKE_EMBEDDED_STORE",
        "LOOKALIKE_COLLECTION",
        "LOOKALIKE_QDRANT_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_store_env")
def test_open_store_defaults_to_edge(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, qdrant_path=tmp_path)
    store = open_store(settings)
    try:
        assert type(store) is EdgeStore
        assert store.collection == "products"
        assert store.path == tmp_path / "products"
        store.ensure_collection(DIM)
        assert (tmp_path / "products" / "edge_config.json").exists()
    finally:
        store.close()


@pytest.mark.usefixtures("clean_store_env")
def test_open_store_local_mode(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, qdrant_path=tmp_path, embedded_store="local", collection="other")
    store = open_store(settings)
    try:
        assert type(store) is ClientStore
        assert store.collection == "other"
        assert not store._is_server
        store.ensure_collection(DIM)
        store.upsert(records(product("p1")))
        assert store.count() == 1
        assert (tmp_path / "local").is_dir()
    finally:
        store.close()


@pytest.mark.usefixtures("clean_store_env")
@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_open_store_with_url_uses_the_server_and_maps_connection_errors(tmp_path: Path) -> None:
    # Nothing listens on port 1: the connection is refused at once.
    settings = Settings(_env_file=None, qdrant_url="http://127.0.0.1:1", qdrant_path=tmp_path, qdrant_timeout=2)
    threads_before = set(threading.enumerate())
    store = open_store(settings)
    try:
        assert type(store) is ClientStore
        assert store._is_server
        assert store.collection == "products"
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.count()
    finally:
        store.close()
        # qdrant-client checks the server version in a thread; let its warning land while it is filtered.
        for thread in set(threading.enumerate()) - threads_before:
            thread.join(timeout=5)
    assert not (tmp_path / "products").exists()
    assert not (tmp_path / "local").exists()


# ------------------------------------------------------------------------------- the current layout's queries
def shop(store: VectorStore) -> dict[str, str]:
    """Six products with words, categories and prices; each has two images (orthogonal axis pairs)."""
    from lookalike.worker.keywords import document_vector

    items = [
        ("kettle", "Stainless electric kettle", "Home & Kitchen | Kettles", 25.0, 0),
        ("teapot", "Porcelain teapot with infuser", "Home & Kitchen | Teapots", 40.0, 1),
        ("jacket", "Blue denim jacket", "Clothing | Jackets", 60.0, 2),
        ("scarf", "Wool scarf, grey", "Clothing | Scarves", 15.0, 3),
        ("puzzle", "Jigsaw puzzle of a lighthouse", "Toys & Games | Puzzles", 12.5, 4),
        ("drone", "Quadcopter drone with camera", "Toys & Games | Drones", None, 5),
    ]
    records = []
    for pid, name, category, price, axis in items:
        payload = {
            "product_id": pid,
            "name": name,
            "category": category,
            "categories": [level.strip() for level in category.split("|")],
            "category_keys": category_keys(category),
            "price_value": price,
        }
        for image in range(2):
            vector = np.array(unit(axis)) * 0.9 + np.array(unit(axis + 6 + image)) * 0.1
            url = f"http://img.test/{pid}/{image}.jpg"
            records.append(
                PointRecord(
                    point_id_for(pid, url),
                    vector,
                    {**payload, "image_url": url, "primary": int(image == 0)},
                    keywords=document_vector(payload),
                )
            )
    store.upsert(records)
    return {pid: name for pid, name, *_ in items}


def products(hits: list[Any]) -> list[str]:
    return list(dict.fromkeys(hit.payload["product_id"] for hit in hits))


def test_a_new_collection_has_the_current_layout(store: VectorStore) -> None:
    from lookalike.worker.store import NAMED

    assert store.layout == NAMED


def test_dense_queries_take_every_filter_alone_and_combined(store: VectorStore) -> None:

    shop(store)
    query = unit(0)
    assert products(store.query_dense(query, 20, Narrowing()))[0] == "kettle"
    assert set(products(store.query_dense(query, 20, Narrowing(category="Clothing")))) == {"jacket", "scarf"}
    assert set(products(store.query_dense(query, 20, Narrowing(category="Puzzles")))) == {"puzzle"}
    assert set(products(store.query_dense(query, 20, Narrowing(min_price=20)))) == {"kettle", "teapot", "jacket"}
    assert set(products(store.query_dense(query, 20, Narrowing(max_price=15)))) == {"scarf", "puzzle"}
    both = Narrowing(category="Home & Kitchen", min_price=30, max_price=50)
    assert products(store.query_dense(query, 20, both)) == ["teapot"]
    assert products(store.query_dense(query, 20, Narrowing(), score_threshold=0.5)) == ["kettle"]
    assert "kettle" not in products(store.query_dense(query, 20, Narrowing(exclude_product="kettle")))


def test_keyword_queries_find_a_rare_word_first(store: VectorStore) -> None:
    from lookalike.worker.keywords import query_vector

    shop(store)
    assert products(store.query_keywords(query_vector("lighthouse"), 10, Narrowing())) == ["puzzle"]
    assert products(store.query_keywords(query_vector("porcelain teapot"), 10, Narrowing()))[0] == "teapot"
    assert products(store.query_keywords(query_vector("denim"), 10, Narrowing(category="Home & Kitchen"))) == []
    assert store.query_keywords(query_vector("zzzz"), 10, Narrowing()) == []


def test_hybrid_queries_fuse_both_signals(store: VectorStore) -> None:
    from lookalike.worker.keywords import query_vector

    shop(store)
    # The dense side points at the kettle, the words at the drone: both come first, ahead of the rest.
    hits = store.query_hybrid(unit(0), query_vector("quadcopter"), 10, Narrowing(), candidates=20)
    fused = products(hits)
    assert set(fused[:2]) == {"kettle", "drone"}
    # Fused scores come from ranks and often tie: ties are broken by point id, on every engine, so an answer
    # never depends on how the engine laid out its segments (before or after an optimize).
    assert hits == sorted(hits, key=lambda hit: (-hit.score, hit.id))
    alone = store.query_hybrid(unit(0), query_vector("quadcopter"), 1, Narrowing(), candidates=20)
    assert alone == hits[:1]
    only_toys = products(
        store.query_hybrid(unit(0), query_vector("quadcopter"), 10, Narrowing(category="Toys & Games"), candidates=20)
    )
    assert set(only_toys) <= {"puzzle", "drone"} and only_toys[0] == "drone"


def test_a_tie_at_the_cut_off_goes_to_the_smaller_point_id_whatever_order_the_engine_gave() -> None:
    from lookalike.worker.store.base import Hit, best_first

    tied = [Hit("c", 0.5, {}), Hit("a", 0.9, {}), Hit("d", 0.5, {}), Hit("b", 0.5, {})]
    assert [hit.id for hit in best_first(tied, 2)] == ["a", "b"]
    assert [hit.id for hit in best_first(list(reversed(tied)), 3)] == ["a", "b", "c"]


def test_recommend_from_a_products_own_vectors_leaves_it_out(store: VectorStore) -> None:

    shop(store)
    positives = store.product_vectors("kettle")
    assert len(positives) == 2
    similar = products(store.recommend(positives, 10, Narrowing(exclude_product="kettle")))
    assert "kettle" not in similar and len(similar) == 5
    assert store.product_vectors("no-such-product") == []


def test_the_vectors_of_several_products_in_one_read_are_each_products_own(store: VectorStore) -> None:

    shop(store)
    together = store.products_vectors(["kettle", "no-such-product", "kettle"])
    assert set(together) == {"kettle"}
    assert sorted(map(tuple, together["kettle"])) == sorted(map(tuple, store.product_vectors("kettle")))
    ids = sorted({str(payload["product_id"]) for _id, payload, _v in store.scroll()})
    together = store.products_vectors(ids)
    assert set(together) == set(ids)
    for product_id in ids:
        assert sorted(map(tuple, together[product_id])) == sorted(map(tuple, store.product_vectors(product_id)))
    assert store.products_vectors([]) == {}


def test_mmr_diversity_returns_the_same_set_size(store: VectorStore) -> None:

    shop(store)
    plain = store.query_dense(unit(0), 6, Narrowing())
    diverse = store.query_dense(unit(0), 6, Narrowing(), diversity=0.5)
    assert len(diverse) == len(plain) == 6
    assert diverse[0].payload["product_id"] == "kettle"


def test_facets_are_a_tree_counted_over_the_querys_matches(store: VectorStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Facets are worked out by the query (worker/query.py) from what the engine ranked, the same on both."""
    from lookalike.state.search import Filters, SearchRequest
    from lookalike.worker import query

    shop(store)
    # Keywords match only the products that hold a word: those are counted, under their paths.
    words = SearchRequest(text="lighthouse", mode="keyword", facets=True).validate()
    assert query.search_request(words, None, store=store).facets == {"Toys & Games": 1, "Toys & Games | Puzzles": 1}
    # A ranked query: the products above the signal's floor (CLIP text: cosine 0.15), the first FACET_CANDIDATES
    # of the ranking at most, one count per product, with the category filter set aside (the control shows where
    # else to look) while the results keep it.
    towards = np.array(unit(0)) * 3 + np.array(unit(1)) * 2 + np.array(unit(4))  # kettle, teapot, then puzzle
    towards /= np.linalg.norm(towards)
    ranked = SearchRequest(text="x", mode="semantic", facets=True, k=5, filters=Filters(category="clothing"))
    answer = query.search_request(ranked.validate(), towards, store=store)
    assert {hit.product_id for hit in answer.results} == {"jacket", "scarf"}
    assert answer.facets == {
        "Home & Kitchen": 2, "Home & Kitchen | Kettles": 1, "Home & Kitchen | Teapots": 1,
        "Toys & Games": 1, "Toys & Games | Puzzles": 1,
    }  # fmt: skip
    monkeypatch.setattr(query, "FACET_CANDIDATES", 2)
    capped = query.search_request(ranked.validate(), towards, store=store)
    assert capped.facets == {"Home & Kitchen": 2, "Home & Kitchen | Kettles": 1, "Home & Kitchen | Teapots": 1}


def test_a_keyword_vector_is_replaced_in_place(store: VectorStore) -> None:
    from lookalike.worker.keywords import document_vector, query_vector

    shop(store)
    ids = [point_id for point_id, _p, _v in store.scroll(product_id="scarf")]
    store.set_keywords(ids, document_vector({"name": "Cashmere shawl"}))
    assert products(store.query_keywords(query_vector("cashmere"), 10, Narrowing())) == ["scarf"]
    assert products(store.query_keywords(query_vector("wool"), 10, Narrowing())) == []


# ------------------------------------------------------------------------------------- the legacy layout
def legacy_edge(root: Path, count: int = 3) -> None:
    """A collection as the previous release made it: one unnamed dense vector, no keyword vector."""
    from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, Point, UpdateOperation

    path = root / COLLECTION
    path.mkdir(parents=True)
    shard = EdgeShard.create(str(path), EdgeConfig(vectors=EdgeVectorParams(size=DIM, distance=Distance.Cosine)))
    shard.update(
        UpdateOperation.upsert_points(
            [
                Point(
                    point_id_for(f"old{i}", f"http://img.test/old{i}.jpg"),
                    unit(i),
                    {
                        "product_id": f"old{i}",
                        "name": f"Vintage item {i} lantern" if i == 1 else f"Item {i}",
                        "categories": ["Old"],
                        "image_url": f"http://img.test/old{i}.jpg",
                    },
                )
                for i in range(count)
            ]
        )
    )
    shard.flush()
    shard.close()


def test_a_legacy_collection_answers_image_queries_and_asks_for_a_reindex_for_words(tmp_path: Path) -> None:
    from lookalike.worker.keywords import query_vector
    from lookalike.worker.store import LEGACY

    legacy_edge(tmp_path)
    store = EdgeStore(tmp_path, COLLECTION)
    try:
        assert store.layout == LEGACY
        assert products(store.query_dense(unit(1), 3, Narrowing()))[0] == "old1"
        assert search(store, unit(2), 1)[0].payload["product_id"] == "old2"
        with pytest.raises(StoreError, match="lookalike reindex"):
            store.query_keywords(query_vector("lantern"), 3, Narrowing())
    finally:
        store.close()
