"""Task names and the queue each one is routed to, written once.

The worker registers its tasks under these names (``worker/tasks.py``), the Celery app routes them with
:data:`TASK_QUEUES` (``worker/app.py``), and the gateway (``app/gateway.py``) sends them by name, so a process
that only sends work never imports the tasks module and the worker's heavy parts behind it.
"""

from __future__ import annotations

from lookalike.state.queues import EMBED_QUEUE, ENCODE_QUEUE, FETCH_QUEUE, INDEX_QUEUE, QUERY_QUEUE

# The ingest pipeline: a download, a batch of embeddings, a batch of upserts.
FETCH_TASK = "lookalike.fetch"
# A batch of jobs in one message (what the producer publishes): Celery's and the broker's cost once per batch.
FETCH_BATCH_TASK = "lookalike.fetch_batch"
EMBED_TASK = "lookalike.embed"
INDEX_TASK = "lookalike.index"
# The store owner's maintenance.
RECONCILE_TASK = "lookalike.reconcile"
OPTIMIZE_TASK = "lookalike.optimize"
AUDIT_TASK = "lookalike.audit"
REINDEX_TASK = "lookalike.reindex"
DUPLICATES_SCAN_TASK = "lookalike.duplicates_scan"  # one page of `lookalike duplicates scan`
# `lookalike reindex --model`: the switch to the shadow collection, and the old collection's deletion.
SWITCH_TASK = "lookalike.switch"
DROP_TASK = "lookalike.drop"
# A query: its vector on the shoppers' encode processes, then the search on the store owner. A query that needs
# a vector is one chain, encode | search_encoded: the encode step hands its vector to the search itself.
ENCODE_TASK = "lookalike.encode"
SEARCH_TASK = "lookalike.search"
SEARCH_ENCODED_TASK = "lookalike.search_encoded"

TASK_QUEUES = {
    FETCH_TASK: FETCH_QUEUE,
    FETCH_BATCH_TASK: FETCH_QUEUE,
    EMBED_TASK: EMBED_QUEUE,
    INDEX_TASK: INDEX_QUEUE,
    RECONCILE_TASK: INDEX_QUEUE,
    OPTIMIZE_TASK: INDEX_QUEUE,
    AUDIT_TASK: INDEX_QUEUE,
    REINDEX_TASK: INDEX_QUEUE,
    DUPLICATES_SCAN_TASK: INDEX_QUEUE,
    SWITCH_TASK: INDEX_QUEUE,
    DROP_TASK: INDEX_QUEUE,
    SEARCH_TASK: QUERY_QUEUE,
    SEARCH_ENCODED_TASK: QUERY_QUEUE,
    ENCODE_TASK: ENCODE_QUEUE,
}
