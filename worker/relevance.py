"""A result's ``match``: how well it matches, 0 to 1, meaning the same thing whatever found it.

The engines' raw scores are not comparable: a cosine between two photos, a cosine between words and a photo
(CLIP puts those much lower: a good one is near 0.3), a BM25 sum that grows with the query's length, or a
fusion score from ranks alone. People need one scale, so each signal is mapped to 0-1 here and the raw score is
kept beside it for programs:

* **image** (a photo, or "more like this"): the cosine, rescaled so that :data:`IMAGE_FLOOR` (what unrelated
  product photos typically score with CLIP ViT-B/32) is 0 and :data:`IMAGE_FULL` (a re-encoded or resized copy)
  is 1;
* **text** (CLIP's text model against the photos): the same with :data:`TEXT_FLOOR` and :data:`TEXT_FULL`;
* **keyword**: the share of the query's distinct (stemmed) words that the product's name, category and
  description hold: 1 when every word is there;
* **hybrid**: the better of its text and keyword values (the fusion score only orders the results).

The constants are CLIP ViT-B/32's usual ranges, not a measurement of a given catalogue. ``CLOSE_MATCH``
(``state/search.py``) is the line under which an answer says ``no_close_match``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

IMAGE_FLOOR, IMAGE_FULL = 0.5, 0.95
TEXT_FLOOR, TEXT_FULL = 0.15, 0.32


def _rescale(value: float, floor: float, full: float) -> float:
    return float(min(1.0, max(0.0, (value - floor) / (full - floor))))


def image_match(cosine: float) -> float:
    return _rescale(cosine, IMAGE_FLOOR, IMAGE_FULL)


def text_match(cosine: float) -> float:
    return _rescale(cosine, TEXT_FLOOR, TEXT_FULL)


def keyword_match(query_terms: Sequence[int], document_terms: Sequence[int]) -> float:
    """The share of the query's distinct terms found in the document (both as BM25 term indices)."""
    wanted = set(query_terms)
    if not wanted:
        return 0.0
    return len(wanted & set(document_terms)) / len(wanted)


def best_cosine(query: Sequence[float] | np.ndarray, vectors: Sequence[Sequence[float]]) -> float:
    """The highest cosine between the query vector and any of the vectors (a product's images); -1 if none."""
    if not len(vectors):
        return -1.0
    matrix = np.asarray(vectors, dtype=np.float32)
    target = np.asarray(query, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1) * (float(np.linalg.norm(target)) or 1.0)
    cosines = matrix @ target / np.where(norms > 0, norms, 1.0)
    return float(cosines.max())


__all__ = ["best_cosine", "image_match", "keyword_match", "text_match"]
