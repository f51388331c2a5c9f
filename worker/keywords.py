"""Keyword vectors: BM25 sparse vectors of a product's name, category and description.

Both engines store them the same way (a sparse vector named ``keywords`` with the IDF modifier, so the engine
weighs rare words by how few documents hold them), and both get them from qdrant-edge's own BM25 encoder,
which works offline. Documents and queries are tokenized the same way, so a word of a product's name finds it.
"""

from __future__ import annotations

from typing import Any

from lookalike.state.process import process_cache

# The payload fields whose words a keyword query searches.
KEYWORD_FIELDS = ("name", "category", "description")


def _encoder() -> Any:
    from qdrant_edge import Bm25, Bm25Config

    return process_cache.get("bm25", lambda: Bm25(Bm25Config()))


def keyword_text(payload: dict[str, Any]) -> str:
    return " ".join(str(payload[name]) for name in KEYWORD_FIELDS if payload.get(name))


def document_vector(payload: dict[str, Any]) -> tuple[list[int], list[float]]:
    """The product's sparse vector as (indices, values): term frequencies, the engine applies the IDF."""
    vector = _encoder().embed_document(keyword_text(payload))
    return list(vector.indices), list(vector.values)


def query_vector(text: str) -> tuple[list[int], list[float]]:
    vector = _encoder().embed_query(text)
    return list(vector.indices), list(vector.values)


def shares_a_word(query: tuple[list[int], list[float]], payload: dict[str, Any]) -> bool:
    """Whether BM25 scores this product above zero for the query: they share a (stemmed) word."""
    return bool(set(query[0]) & set(document_vector(payload)[0]))
