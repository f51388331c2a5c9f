"""Outcome names counted in the ledger, written once: the producer writes them, metrics and status read them."""

from __future__ import annotations

# What happens to one job: exactly one of these, counted once.
INDEXED = "indexed"
FAILED = "failed"
SUPERSEDED = "superseded"
JOB_OUTCOMES = (INDEXED, FAILED, SUPERSEDED)

# What a change (an event, or a product in an ingest) turned into; counted as ``events:<name>``.
NEW = "new"
CHANGED = "changed"
UNCHANGED = "unchanged"
DELETED = "deleted"
STALE = "stale"
REDONE = "redone"  # an earlier producer died before enqueuing this product's work; done again in full
MISSING = "missing"  # a delete for a product the registry never saw
EVENT_FAILED = "failed"
EVENT_OUTCOMES = (NEW, CHANGED, UNCHANGED, DELETED, MISSING, REDONE, STALE, EVENT_FAILED)
