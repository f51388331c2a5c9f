"""The duplicate report: which threshold applies to a pair, and groups of products built from the pairs.

A pair is reported when its score reaches the threshold that applies to it, neither product is deleted, both
images are still the products' own (nothing stale is reported even before reconcile catches up), and no person
marked it ``distinct``. Groups are the connected pairs (union-find), so three listings of one photo are one
group even when the detection recorded only two of the three pairs. A pair marked ``same`` joins its products
whatever its score. Groups come best evidence first: the highest score of any pair inside, ties by product id.

Which threshold applies, in order (the report names it for every pair):

1. a category override (LOOKALIKE_DUPLICATES_CATEGORY_MIN_SCORE) when either product has that category at any
   level of its path (the higher of several);
2. else LOOKALIKE_DUPLICATES_MIN_SCORE;
3. an explicit ``--min-score`` (``min_score=`` in the API) raises both for this report, never lowers them.

The detection (index stage and scan) records every pair from the *floor*, the lowest of these settings, so the
report can apply each category's own threshold afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lookalike.config.settings import Settings
from lookalike.state.duplicates import DISTINCT, SAME, DuplicateBook, ImagePair
from lookalike.state.registry import ProductRegistry, ProductState

SETTING = "LOOKALIKE_DUPLICATES_MIN_SCORE"
OPTION = "min_score"


@dataclass(frozen=True)
class Thresholds:
    default: float
    categories: Mapping[str, float]  # lower-case category level -> threshold
    min_score: float | None = None  # the report's own floor, if asked

    @classmethod
    def from_settings(cls, settings: Settings, min_score: float | None = None) -> Thresholds:
        return cls(settings.duplicates_min_score, settings.duplicates_category_scores, min_score)

    @property
    def floor(self) -> float:
        """The lowest threshold anything may apply: what the detection records from."""
        return min([self.default, *self.categories.values()])

    def for_levels(self, levels: Iterable[str]) -> tuple[float, str]:
        """(threshold, where it comes from) for a pair whose products have these category levels."""
        matched = [(self.categories[level.lower()], level) for level in levels if level.lower() in self.categories]
        if matched:
            value, level = max(matched)
            source = f"category {level!r} (LOOKALIKE_DUPLICATES_CATEGORY_MIN_SCORE)"
        else:
            value, source = self.default, SETTING
        if self.min_score is not None and self.min_score > value:
            return self.min_score, OPTION
        return value, source


_EMPTY = ProductState(version=0, deleted=False, payload={}, images=())


def _score(data: dict[str, Any]) -> float:
    """A group's or a pair's score for sorting: a pair marked same with no image pair on record sorts last."""
    return -1.0 if data["score"] is None else float(data["score"])


def _levels(state: ProductState) -> list[str]:
    categories = state.payload.get("categories")
    return [str(level) for level in categories] if isinstance(categories, list) else []


def _product(product_id: str, state: ProductState) -> dict[str, Any]:
    payload = state.payload
    return {
        "product_id": product_id,
        "name": payload.get("name"),
        "price": payload.get("price"),
        "product_url": payload.get("product_url"),
        "category": payload.get("category"),
        "image_url": state.images[0] if state.images else None,
    }


def _pair_data(pair: ImagePair | None, a: str, b: str, threshold: float, source: str, decision: str | None) -> dict:
    data: dict[str, Any] = {"a": a, "b": b, "threshold": threshold, "threshold_source": source, "decision": decision}
    if pair is None:  # marked same, with no image pair on record
        data.update({"score": None, "a_image": None, "b_image": None})
    else:
        flipped = pair.a != a
        data.update(
            {
                "score": pair.score,
                "a_image": pair.b_image if flipped else pair.a_image,
                "b_image": pair.a_image if flipped else pair.b_image,
            }
        )
    return data


def build_groups(
    book: DuplicateBook,
    registry: ProductRegistry,
    thresholds: Thresholds,
    *,
    category: str | None = None,
) -> list[dict[str, Any]]:
    """Every group the report shows now, best evidence first (no paging; see :func:`page`)."""
    best: dict[tuple[str, str], ImagePair] = {}
    for pair in book.pairs():
        key = pair.products
        if key not in best or pair.score > best[key].score:
            best[key] = pair
    decisions = book.decisions()
    wanted = {product for key in [*best, *decisions] for product in key}
    states = registry.get_many(sorted(wanted))

    def live(product: str) -> ProductState | None:
        state = states.get(product)
        return None if state is None or state.deleted else state

    edges: dict[tuple[str, str], dict[str, Any]] = {}
    for key in set(best) | {key for key, made in decisions.items() if made.decision == SAME}:
        a, b = key
        state_a, state_b = live(a), live(b)
        if state_a is None or state_b is None:
            continue
        made = decisions.get(key)
        if made is not None and made.decision == DISTINCT:
            continue
        threshold, source = thresholds.for_levels([*_levels(state_a), *_levels(state_b)])
        pair = best.get(key)
        if pair is not None:
            image_a, image_b = (pair.a_image, pair.b_image) if pair.a == a else (pair.b_image, pair.a_image)
            if not (state_a.wants(image_a) and state_b.wants(image_b)):
                pair = None  # an image replaced since: stale evidence is never shown
        if made is None and (pair is None or pair.score < threshold):
            continue
        edges[key] = _pair_data(pair, a, b, threshold, source, made.decision if made else None)

    groups: list[dict[str, Any]] = []
    wanted_level = category.strip().lower() if category else None
    for products in connected(edges):
        products.sort()
        inside = set(products)
        if wanted_level is not None and not any(
            wanted_level in (level.lower() for level in _levels(states[p] or _EMPTY)) for p in inside
        ):
            continue
        inner = [data for key, data in edges.items() if key[0] in inside]
        pairs = sorted(inner, key=lambda data: (-_score(data), data["a"], data["b"]))
        scored = [data for data in pairs if data["score"] is not None]
        groups.append(
            {
                "products": [_product(p, states[p] or _EMPTY) for p in products],
                "score": scored[0]["score"] if scored else None,
                "best_pair": scored[0] if scored else pairs[0],
                "pairs": pairs,
            }
        )
    groups.sort(key=lambda group: (-_score(group), str(group["products"][0]["product_id"])))
    return groups


def connected(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The groups (connected components, union-find) that these product pairs make."""
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        parent.setdefault(node, node)
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in edges:
        parent[root(a)] = root(b)
    members: dict[str, list[str]] = {}
    for node in parent:
        members.setdefault(root(node), []).append(node)
    return list(members.values())


def page(groups: list[dict[str, Any]], offset: int, limit: int | None) -> list[dict[str, Any]]:
    return groups[offset : None if limit is None else offset + limit]


def summary(groups: list[dict[str, Any]], book: DuplicateBook, thresholds: Thresholds) -> dict[str, Any]:
    """What `lookalike duplicates status` prints: counts, thresholds, the last scan."""
    decisions = book.decisions().values()
    return {
        "groups": len(groups),
        "products_in_groups": sum(len(group["products"]) for group in groups),
        "pairs_reported": sum(len(group["pairs"]) for group in groups),
        "image_pairs_recorded": book.count_pairs(),
        "decisions": {kind: sum(1 for made in decisions if made.decision == kind) for kind in (DISTINCT, SAME)},
        "min_score": thresholds.default,
        "category_min_scores": dict(thresholds.categories),
        "detection_floor": thresholds.floor,
        "scan": book.scan_state(),
    }


def report(
    book: DuplicateBook,
    registry: ProductRegistry,
    settings: Settings,
    *,
    min_score: float | None = None,
    category: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> dict[str, Any]:
    """The report as the CLI and the API return it: one page of groups, how many there are, the thresholds."""
    thresholds = Thresholds.from_settings(settings, min_score)
    groups = build_groups(book, registry, thresholds, category=category)
    return {
        "groups": page(groups, offset, limit),
        "total": len(groups),
        "offset": offset,
        "min_score": thresholds.default if min_score is None else max(min_score, thresholds.default),
        "category_min_scores": dict(thresholds.categories),
    }


def unknown_products(registry: ProductRegistry, product_ids: Iterable[str]) -> list[str]:
    """The ids the registry does not hold (a decision is only taken on products lookalike knows)."""
    states = registry.get_many(product_ids)
    return [product for product, state in states.items() if state is None]
