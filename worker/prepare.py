"""A shopper's photo or image URL -> the model's input, made in the process where the query arrived.

Why there and not on the encode processes:

* memory: a 10 MB upload becomes the same 224x224 transport JPEG catalogue images travel in (10-25 kB), made
  by the same guarded decoder (:func:`lookalike.worker.decode.decode_image`), so no multi-megabyte message ever
  crosses Redis, and how many decode at once is bounded (:func:`~lookalike.worker.decode.decode_slots`);
* time: a slow image URL holds a thread of the process that waits for the answer anyway (the API admits a
  bounded number of searches), never a model process other shoppers need. Its download has its own deadline,
  ``LOOKALIKE_QUERY_FETCH_DEADLINE``, shorter than the query timeout;
* policy: a shopper's URL reaches public addresses only, plus ``LOOKALIKE_QUERY_ALLOW_NETWORKS`` - never the
  catalogue's ``LOOKALIKE_FETCH_ALLOW_NETWORKS``. Every failure to get an image from it (refused address,
  connection error, timeout, an answer that is not an image) is one reason to the shopper, ``fetch_failed``,
  so that answers cannot map which ports listen where; the specific reason goes to the log.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import replace
from typing import Any, BinaryIO

from lookalike.config.settings import Settings
from lookalike.state.errors import Rejected
from lookalike.state.process import process_cache
from lookalike.state.search import QueryRejected, SearchRequest
from lookalike.worker.decode import decode_image, decode_slots, encode_for_transport
from lookalike.worker.fetch import AddressPolicy, FetchLimits, fetch_image, make_session

log = logging.getLogger("lookalike.query")

FETCH_FAILED = "fetch_failed"
FETCH_FAILED_DETAIL = "the image URL did not give an image (check that it is public and answers quickly)"


def query_limits(settings: Settings) -> FetchLimits:
    """A shopper's download: the query deadline bounds every timeout, the query size cap bounds the bytes."""
    deadline = settings.query_fetch_deadline
    return FetchLimits(
        connect_timeout=min(settings.fetch_connect_timeout, deadline),
        read_timeout=min(settings.fetch_read_timeout, deadline),
        deadline=deadline,
        max_bytes=settings.query_max_bytes,
    )


class QueryPreparer:
    """Turns a request's photo or image URL into a prepared request (the transport JPEG); one per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.policy = AddressPolicy.from_networks(settings.query_allowed_networks, "LOOKALIKE_QUERY_ALLOW_NETWORKS")
        self.limits = query_limits(settings)
        self.decoding = threading.BoundedSemaphore(
            decode_slots(settings.decode_memory_budget, settings.max_image_pixels)
        )
        self._session: Any = None
        self._session_lock = threading.Lock()

    @property
    def session(self) -> Any:
        with self._session_lock:
            if self._session is None:
                self._session = make_session(
                    self.policy,
                    user_agent=self.settings.fetch_user_agent,
                    max_redirects=self.settings.fetch_max_redirects,
                    pool_size=16,
                )
            return self._session

    def prepare(self, request: SearchRequest) -> SearchRequest:
        """The request with ``image`` the 224x224 transport JPEG (``prepared``); other kinds unchanged.

        Refusals are :class:`QueryRejected`: the decoder's own reason for an upload, ``fetch_failed`` for
        anything that went wrong with an image URL."""
        if request.kind != "image" or request.prepared or request.encoded:
            return request
        if request.image is not None:
            return replace(request, image=self._reduce(request.image), prepared=True)
        assert request.image_url is not None
        url = request.image_url
        try:
            data = fetch_image(url, self.session, self.limits).data
            reduced = self._reduce(data)
        except Rejected as exc:
            log.warning("shopper image URL failed: reason=%s detail=%s url=%s", exc.reason, exc.detail, url[:500])
            raise QueryRejected(FETCH_FAILED, FETCH_FAILED_DETAIL) from exc
        return replace(request, image=reduced, image_url=None, prepared=True)

    def reduce_upload(self, file: BinaryIO) -> bytes:
        """An uploaded photo, still in its (spooled) file, -> the transport JPEG. The bytes are read only once a
        decode slot is free, so uploads waiting their turn hold their spool file, not their photo, in memory."""
        with self.decoding:
            data = file.read(self.settings.query_max_bytes + 1)
            return self._reduce(data, slot_held=True)

    def _reduce(self, data: bytes, *, slot_held: bool = False) -> bytes:
        if len(data) > self.settings.query_max_bytes:
            raise QueryRejected("too_large", f"the image is over {self.settings.query_max_bytes} bytes")
        with contextlib.nullcontext() if slot_held else self.decoding:
            try:
                image = decode_image(
                    data, max_pixels=self.settings.max_image_pixels, formats=self.settings.allowed_image_formats
                )
            except QueryRejected:
                raise
            except Rejected as exc:
                raise QueryRejected(exc.reason, exc.detail) from exc
            return encode_for_transport(image)

    def close(self) -> None:
        with self._session_lock:
            if self._session is not None:
                self._session.close()
                self._session = None


def process_preparer() -> QueryPreparer:
    """This process's preparer, for the current settings (one decode budget and session per process)."""
    from lookalike.config.settings import get_settings

    settings = get_settings()
    preparer = process_cache.get("query-preparer", lambda: QueryPreparer(settings))
    if preparer.settings is not settings:  # the settings were reloaded (tests, the CLI's embedded broker)
        process_cache.pop("query-preparer")
        preparer = process_cache.get("query-preparer", lambda: QueryPreparer(settings))
    return preparer


__all__ = ["FETCH_FAILED", "QueryPreparer", "process_preparer", "query_limits"]
