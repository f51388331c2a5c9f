"""Category paths as people type them: one normal form for the index, the filters and the facets.

A catalogue's category is a path, ``"Toys & Games | Puzzles | Jigsaw Puzzles"``. People filter by any level
(``puzzles``), or by a path from the top (``toys & games | puzzles``), in any case and spacing. So each point
carries ``category_keys``, written when it is indexed: the normal form (:func:`normalize`) of every level and
of every path from the top. A filter is normalized the same way and matched against that one field, exactly,
by either engine; no engine-side case folding or prefix matching is needed.

Facets are a tree: counts keyed by the path from the top (``"Toys & Games"``, ``"Toys & Games | Puzzles"``),
in the catalogue's own spelling, so "Décor" under "Home Décor" is never confused with a top-level "Décor".
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

SEPARATOR = " | "


def levels(category: str | None) -> list[str]:
    """The path's levels as written, trimmed (``"A | B"`` -> ``["A", "B"]``); empty levels dropped."""
    if not category:
        return []
    return [" ".join(level.split()) for level in category.split("|") if level.strip()]


def normalize(text: str) -> str:
    """The comparable form of a level or a path: Unicode NFKC, case-folded, runs of spaces collapsed, and
    ``|`` separators spaced the same way (``"Toys &  games|PUZZLES"`` -> ``"toys & games | puzzles"``)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return SEPARATOR.join(levels(folded))


def prefixes(category: str | None) -> list[str]:
    """Every path from the top, as written: ``"A | B | C"`` -> ``["A", "A | B", "A | B | C"]``."""
    found = levels(category)
    return [SEPARATOR.join(found[: depth + 1]) for depth in range(len(found))]


def keys(category: str | None) -> list[str]:
    """What a filter may name, normalized: every level and every path from the top (no duplicates)."""
    found = levels(category)
    wanted = [normalize(level) for level in found] + [normalize(path) for path in prefixes(category)[1:]]
    return list(dict.fromkeys(key for key in wanted if key))


def facet_tree(categories: Iterable[str | None]) -> dict[str, int]:
    """Products per path from the top, one category per product: ``{"A": 3, "A | B": 2, "A | C": 1}``.

    Paths that differ only in case or spacing are one node, shown in the spelling seen first."""
    counts: dict[str, int] = {}
    spelled: dict[str, str] = {}
    for category in categories:
        for path in prefixes(category):
            shown = spelled.setdefault(normalize(path), path)
            counts[shown] = counts.get(shown, 0) + 1
    return counts
