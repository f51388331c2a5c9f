"""Catalogue changes -> the least work that brings the index in step.

Each product upsert or delete is compared with the registry's entry for that product (atomically, newest
version wins) and turned into:

* jobs for images the index does not have yet (a new product, or images added);
* a reconcile of the product on the store side when images were removed, its fields changed (price, name,
  description, category: updated in place, no download, no embedding) or it was deleted;
* nothing at all when it is unchanged, or when the change is stale (not newer than what is registered).

A CSV ingest is a batch of upserts through the same function, so re-running it over a changed catalogue
does the same least work, and re-running it unchanged enqueues nothing.

The caller enqueues ``plan.jobs`` and ``plan.reconcile`` and then calls ``registry.settle(plan.settle)``;
see :mod:`lookalike.state.registry` for what happens when it dies before that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lookalike.producer.product import Product
from lookalike.state.failures import Failure
from lookalike.state.messages import Job
from lookalike.state.outcomes import CHANGED, DELETED, MISSING, NEW, REDONE, STALE, UNCHANGED
from lookalike.state.registry import Applied, ProductRegistry, ProductState, Stale, version_text


@dataclass
class SyncPlan:
    jobs: list[Job] = field(default_factory=list)
    reconcile: list[str] = field(default_factory=list)
    settle: list[tuple[str, int | float]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    removed_images: int = 0
    payload_updates: int = 0

    def merge(self, other: SyncPlan) -> None:
        self.jobs.extend(other.jobs)
        self.reconcile.extend(other.reconcile)
        self.settle.extend(other.settle)
        self.outcomes.update(other.outcomes)
        self.removed_images += other.removed_images
        self.payload_updates += other.payload_updates


def state_of(product: Product, version: int | float) -> ProductState:
    return ProductState(version=version, deleted=False, payload=product.payload(), images=product.image_urls)


def plan_upserts(
    registry: ProductRegistry,
    products: Iterable[tuple[Product, int | float]],
    run_id: str,
    *,
    full: bool = False,
) -> SyncPlan:
    """Register each (product, version) and plan its work; ``full`` re-enqueues every image regardless."""
    plan = SyncPlan()
    items = list(products)
    applied_here: set[tuple[str, str]] = set()
    results = registry.apply_many((product.id, state_of(product, version)) for product, version in items)
    for (product, version), result in zip(items, results, strict=True):
        key = (product.id, version_text(version))
        redo = False
        if isinstance(result, Stale):
            if not result.replay or key in applied_here:
                plan.outcomes[STALE] += 1
                continue
            redo = True
        applied_here.add(key)
        plan.settle.append((product.id, version))
        previous = result.previous if isinstance(result, Applied) else None
        if redo or (isinstance(result, Applied) and result.previous_unfinished):
            wanted = list(product.image_urls)
            plan.reconcile.append(product.id)
            plan.outcomes[REDONE] += 1
        elif previous is None or previous.deleted:
            wanted = list(product.image_urls)
            plan.outcomes[NEW] += 1
        else:
            known = set(previous.images)
            added = [url for url in product.image_urls if url not in known]
            removed = known - set(product.image_urls)
            payload_changed = previous.payload != product.payload()
            if removed or payload_changed:
                plan.reconcile.append(product.id)
                plan.removed_images += len(removed)
                plan.payload_updates += int(payload_changed)
            plan.outcomes[CHANGED if added or removed or payload_changed else UNCHANGED] += 1
            wanted = list(product.image_urls) if full else added
        plan.jobs.extend(Job(run_id=run_id, product_id=product.id, image_url=url, version=version) for url in wanted)
    return plan


def plan_deletes(registry: ProductRegistry, deletes: Iterable[tuple[str, int | float]]) -> SyncPlan:
    """Tombstone each (product id, version); the store side deletes every point of the product."""
    plan = SyncPlan()
    items = list(deletes)
    applied_here: set[tuple[str, str]] = set()
    tombstones = [
        (product_id, ProductState(version=version, deleted=True, payload={}, images=()))
        for product_id, version in items
    ]
    for (product_id, version), result in zip(items, registry.apply_many(tombstones), strict=True):
        key = (product_id, version_text(version))
        if isinstance(result, Stale) and (not result.replay or key in applied_here):
            plan.outcomes[STALE] += 1
            continue
        applied_here.add(key)
        plan.settle.append((product_id, version))
        if isinstance(result, Applied) and (result.previous is None or result.previous.deleted):
            # Never seen (or already deleted): the tombstone still guards against a late, older upsert. The
            # delete still goes to the store: if the registry was lost, points of this product may be there.
            plan.outcomes[MISSING] += 1
        else:
            plan.outcomes[DELETED] += 1
        plan.reconcile.append(product_id)
    return plan


def plan_retries(registry: ProductRegistry, failures: Iterable[Failure], run_id: str) -> tuple[SyncPlan, int]:
    """Jobs for failed images whose product still wants them (one per product and URL), as ``run_id``.

    Returns the plan and how many failures were dropped: the product was deleted or the image removed since,
    or the same image failed more than once.
    """
    taken = list(failures)
    states = registry.get_many(failure.product_id for failure in taken)
    plan = SyncPlan()
    seen: set[tuple[str, str]] = set()
    dropped = 0
    for failure in taken:
        state = states.get(failure.product_id)
        key = (failure.product_id, failure.image_url)
        if state is None or not state.wants(failure.image_url) or key in seen:
            dropped += 1
            continue
        seen.add(key)
        plan.jobs.append(
            Job(run_id=run_id, product_id=failure.product_id, image_url=failure.image_url, version=state.version)
        )
    return plan, dropped


def plan_catalog(
    registry: ProductRegistry,
    products: Sequence[Product],
    version: int | float,
    run_id: str,
    *,
    full: bool = False,
    prune: bool = False,
) -> tuple[SyncPlan, int | None]:
    """A whole catalogue as one version: upsert every product; with ``prune``, delete the registered products
    it no longer lists. Returns the plan and how many products were pruned (None without ``prune``)."""
    plan = plan_upserts(registry, ((product, version) for product in products), run_id, full=full)
    if not prune:
        return plan, None
    listed = {product.id for product in products}
    gone = sorted(registry.live_ids() - listed)
    deletes = plan_deletes(registry, ((product_id, version) for product_id in gone))
    plan.merge(deletes)
    return plan, deletes.outcomes.get(DELETED, 0)


def plan_missing(registry: ProductRegistry, missing: Iterable[tuple[str, str]], run_id: str) -> SyncPlan:
    """Jobs for registered images the store has no point for (after a lost store or lost jobs), re-checked
    against the registry now: an image removed meanwhile is not enqueued."""
    pairs = list(missing)
    states = registry.get_many(product_id for product_id, _url in pairs)
    plan = SyncPlan()
    for product_id, url in dict.fromkeys(pairs):
        state = states.get(product_id)
        if state is not None and state.wants(url):
            plan.jobs.append(Job(run_id=run_id, product_id=product_id, image_url=url, version=state.version))
    return plan
