"""Prometheus metrics for the whole cluster, read from Redis at each scrape (`lookalike metrics`).

Workers write their counters and stage-time histograms to Redis (see :mod:`lookalike.state.ledger`), so one
exporter anywhere reports every worker on every machine, and restarts of workers lose nothing.

Names (all prefixed ``lookalike_``):

================================================  =========  =================================================
lookalike_jobs_enqueued_total                     counter    image jobs published by producers
lookalike_images_indexed_total                    counter    images written to the vector store
lookalike_images_failed_total{reason}             counter    images failed for good, by reason
lookalike_images_superseded_total                 counter    jobs dropped because the catalogue changed
lookalike_embedding_cache_hits_total              counter    images whose vector came from the content cache
lookalike_embed_calls_total                       counter    model calls (batches)
lookalike_embedded_images_total                   counter    images through the model
lookalike_events_total{outcome}                   counter    change events: new, changed, unchanged,
                                                             deleted, missing, redone, stale, failed
lookalike_stage_seconds{stage}                    histogram  download, decode, embed (per batch), upsert and
                                                             duplicates (per batch), queue_wait (per job)
lookalike_store_disk_full_total                   counter    index batches put back to wait because the store's
                                                             disk was short of LOOKALIKE_STORE_MIN_FREE_BYTES
lookalike_conditions{kind}                        gauge      conditions stopping work now: store_disk_full,
                                                             pool_stopped, broker_out_of_memory
lookalike_queue_depth{queue}                      gauge      messages waiting in each queue
lookalike_queue_oldest_age_seconds{queue}         gauge      how long the oldest waiting message has waited
lookalike_failures_recorded                       gauge      entries in the dead-letter list
lookalike_products_registered                     gauge      products in the registry (tombstones included)
================================================  =========  =================================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from lookalike.state.conditions import CONDITION_KINDS, Conditions
from lookalike.state.ledger import BUCKETS, STAGES
from lookalike.state.outcomes import EVENT_OUTCOMES
from lookalike.state.queues import oldest_age, queue_depth


class LookalikeCollector(Collector):
    def __init__(self, ctx: Any, queues: tuple[str, ...]) -> None:
        self.ctx = ctx
        self.queues = queues

    def collect(self) -> Iterator[Any]:
        stats = self.ctx.ledger.stats()

        def counter(name: str, doc: str, field: str) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc)
            family.add_metric([], stats.get(field, 0))
            return family

        yield counter("lookalike_jobs_enqueued", "Image jobs published by producers.", "enqueued")
        yield counter("lookalike_images_indexed", "Images written to the vector store.", "indexed")
        yield counter("lookalike_images_superseded", "Jobs dropped because the catalogue changed.", "superseded")
        yield counter("lookalike_embedding_cache_hits", "Images whose vector came from the cache.", "cache_hits")
        yield counter("lookalike_embed_calls", "Model calls (batches).", "embed_calls")
        yield counter("lookalike_embedded_images", "Images through the model.", "embedded")

        yield counter(
            "lookalike_store_disk_full",
            "Index batches put back to wait because the store's disk was short of its minimum free space.",
            "store_disk_full",
        )
        active = Counter(c.get("kind") for c in Conditions(self.ctx.redis, self.ctx.settings.key_prefix).active())
        conditions = GaugeMetricFamily(
            "lookalike_conditions",
            "Conditions stopping work now (store_disk_full, pool_stopped, broker_out_of_memory).",
            labels=["kind"],
        )
        for kind in CONDITION_KINDS:
            conditions.add_metric([kind], active.get(kind, 0))
        yield conditions

        failed = CounterMetricFamily("lookalike_images_failed", "Images failed for good, by reason.", labels=["reason"])
        for name, value in sorted(stats.items()):
            if name.startswith("failed:"):
                failed.add_metric([name.split(":", 1)[1]], value)
        yield failed

        events = CounterMetricFamily("lookalike_events", "Catalogue change events by outcome.", labels=["outcome"])
        for outcome in EVENT_OUTCOMES:
            events.add_metric([outcome], stats.get(f"events:{outcome}", 0))
        yield events

        histograms = self.ctx.ledger.histograms()
        stage_seconds = HistogramMetricFamily(
            "lookalike_stage_seconds", "Seconds spent per stage (embed and upsert per batch).", labels=["stage"]
        )
        for stage in STAGES:
            observed = histograms.get(stage, {})
            cumulative = 0.0
            buckets = []
            for bound in BUCKETS:
                cumulative += observed.get(f"{bound:g}", 0.0)
                buckets.append((f"{bound:g}", cumulative))
            cumulative += observed.get("+Inf", 0.0)
            buckets.append(("+Inf", cumulative))
            stage_seconds.add_metric([stage], buckets, observed.get("sum", 0.0))
        yield stage_seconds

        depth = GaugeMetricFamily("lookalike_queue_depth", "Messages waiting in each queue.", labels=["queue"])
        age = GaugeMetricFamily(
            "lookalike_queue_oldest_age_seconds", "Age of the oldest waiting message.", labels=["queue"]
        )
        for queue in self.queues:
            depth.add_metric([queue], queue_depth(self.ctx.redis, queue))
            age.add_metric([queue], oldest_age(self.ctx.redis, queue) or 0.0)
        yield depth
        yield age

        recorded = GaugeMetricFamily("lookalike_failures_recorded", "Entries in the dead-letter list.")
        recorded.add_metric([], self.ctx.failures.count())
        yield recorded
        registered = GaugeMetricFamily("lookalike_products_registered", "Products in the registry.")
        registered.add_metric([], self.ctx.registry.count())
        yield registered


def serve_metrics(ctx: Any, queues: tuple[str, ...], address: str, port: int) -> Any:
    """Start the exporter's HTTP server in a background thread; returns the server."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(LookalikeCollector(ctx, queues))
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
