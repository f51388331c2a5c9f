"""`lookalike reindex --model DIR`: move the index to another model with no downtime, and only if it is as good.

1. The **shadow** collection, named after the new model's fingerprint, records the new models (and which
   collection and vision model it replaces) before anything is written to it.
2. It is filled by the normal workers and queues: one job per registered image, each naming the shadow, so the
   workers embed it with the shadow's model and the store owner writes it there (a run of kind ``reindex``:
   progress bar, `lookalike status`, failures as for any run). Meanwhile the live collection answers queries
   and takes every write as before.
3. **Catch-up from the registry**: the store owner audits the shadow against the registry (points of deleted
   products or removed images deleted, changed product fields copied, registered images with no point listed)
   and the missing images are enqueued for it, round after round until none is missing. So whatever reached
   the live collection meanwhile (events, a CSV re-run) reaches the shadow too. An image the live collection
   lacks as well (a download that fails for good) does not hold the switch back.
4. **The gate**: `lookalike eval` on both collections with the same sample and seed; the switch happens only if
   the shadow's overall recall@1 is not lower than the live one's by more than ``max_drop``.
5. **The switch**, by the store owner between two queries; then one more catch-up, on the new live collection,
   for what reached only the old one in between. The old collection is kept (queries encoded with its model
   in the seconds before every encoder sees the switch are answered from it) until `--drop-old`.

Every step is idempotent and its state is in the store (the shadow and its record) and the registry, not in
Redis alone: a run killed anywhere is resumed by running the command again, and a run after completion finds
nothing to do.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lookalike.app.ingest import Ingest, ProgressFactory
from lookalike.app.services import Services
from lookalike.state import runs

Note = Callable[[str], None]
MAX_ROUNDS = 5


class ReindexFailed(Exception):
    """Exit 2: bad input. Exit 1: the shadow is incomplete or the gate refused the switch (``report`` says why)."""

    def __init__(self, message: str, code: int = 2, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.report = report


def check_model_directories(model_dir: Path, text_model_dir: Path | None) -> None:
    """A directory that holds no model is bad input (:class:`ReindexFailed`, exit 2), found before anything
    else is looked up."""
    from lookalike.worker.fingerprint import GRAPH

    for directory, needs in ((model_dir, ("model.onnx", "preprocessor_config.json")), (text_model_dir, (GRAPH,))):
        if directory is None:
            continue
        for name in needs:
            if not (directory / name).is_file():
                raise ReindexFailed(f"{directory} has no {name}: not a model directory")


def shadow_name(collection: str, fingerprint: str) -> str:
    return f"{collection}.{fingerprint.replace('name:', 'name-')}"


def _catch_up(session: Ingest, collection: str, *, timeout: float, quiet: bool) -> dict[str, Any]:
    """Audit ``collection`` against the registry on the store owner and fill in what it lacks, round after
    round, until nothing is missing or a round indexes nothing. Returns what it did and what is still missing."""
    from lookalike.producer.enqueue import Backpressure, carry_out
    from lookalike.producer.sync import plan_missing
    ctx = session.ctx
    done: dict[str, Any] = {"rounds": 0, "enqueued": 0, "indexed": 0, "failed": 0, "orphans_deleted": 0}
    missing: list[tuple[str, str]] = []
    for _ in range(MAX_ROUNDS):
        audited = session.gateway.audit(timeout=timeout, collection=collection)
        done["orphans_deleted"] += audited["orphan_points_deleted"]
        missing = [(str(p), str(u)) for p, u in audited["missing"]]
        done["points"] = audited["points_seen"] - audited["orphan_points_deleted"]
        if not missing:
            break
        run_id = runs.begin(ctx.ledger, runs.Kind.REINDEX, collection)
        plan = plan_missing(ctx.registry, missing, run_id)
        plan.jobs = [dataclasses.replace(job, collection=collection) for job in plan.jobs]
        if not plan.jobs:
            missing = []
            break
        carry_out(
            plan,
            session.publisher,
            ctx.registry,
            Backpressure(ctx.settings.fetch_high_water),
            run_id=run_id,
            ledger=ctx.ledger,
        )
        runs.published(ctx.ledger, run_id, anything=True)
        result = session.wait_until_done(run_id, len(plan.jobs), quiet=quiet)
        done["rounds"] += 1
        done["enqueued"] += len(plan.jobs)
        done["indexed"] += result.indexed
        done["failed"] += result.failed
        if result.indexed == 0:
            break
    done["missing"] = missing
    return done


def reindex_model(
    services: Services,
    *,
    model_dir: Path,
    text_model_dir: Path | None,
    max_drop: float,
    sample: int,
    seed: int,
    drop_old: bool,
    timeout: float,
    progress: ProgressFactory,
    quiet: bool,
) -> dict[str, Any]:
    """The whole operation; returns the report (``switched``, ``reason``, both evaluations...). Raises
    :class:`ReindexFailed` for bad input (2), an incomplete shadow or a refused switch (1)."""
    from lookalike.app.evaluation import run_eval
    from lookalike.worker.fingerprint import TEXT_FILES, VISION_FILES, model_id
    from lookalike.worker.ownership import CollectionModel, configured_models, read_record
    from lookalike.worker.store import live_collection

    check_model_directories(model_dir, text_model_dir)
    settings = services.settings
    note = services.note
    with Ingest(wait=True, note=note, progress=progress, broker=services.broker) as session:
        live = live_collection(settings)
        current = read_record(settings, live) or configured_models(settings)
        vision = model_id(settings.model, model_dir.resolve(), VISION_FILES)
        text = model_id(settings.text_model, text_model_dir.resolve(), TEXT_FILES) if text_model_dir else current.text
        report: dict[str, Any] = {"live": live, "model": {"vision": vision.to_data(), "text": text.to_data()}}
        if current.vision.fingerprint == vision.fingerprint and current.text.fingerprint == text.fingerprint:
            # Done before (or killed after the switch): only the last catch-up can be left to do.
            caught = _catch_up(session, live, timeout=timeout, quiet=quiet)
            report.update(switched=False, reason=f"the live collection {live!r} already belongs to this model")
            report["caught_up"] = caught["indexed"]
        else:
            shadow = shadow_name(settings.collection, vision.fingerprint)
            _ensure_shadow(settings, shadow, CollectionModel(
                vision, text, False, time.time(), replaces=live, previous=current.vision.fingerprint
            ))  # fmt: skip
            report["shadow"] = shadow
            note(f"filling {shadow} with vision model {vision.describe()} (the live {live} keeps answering)")
            filled = _catch_up(session, shadow, timeout=timeout, quiet=quiet)
            report["filled"] = {k: v for k, v in filled.items() if k != "missing"}
            lacking = set(filled["missing"])
            if lacking:
                # Images the live collection lacks too (failed for good) are not the shadow's to hold back.
                lacking -= {(str(p), str(u)) for p, u in session.gateway.audit(timeout=timeout)["missing"]}
            if lacking:
                report.update(switched=False, reason=f"the shadow lacks {len(lacking)} image(s) the live one has")
                raise _refused(report)
            note(f"evaluating {live} and {shadow} on the same sample (seed {seed})")
            before = run_eval(services, sample=sample, seed=seed, collection=live)
            after = run_eval(services, sample=sample, seed=seed, collection=shadow)
            report["eval"] = {"live": before, "shadow": after}
            old, new = before["overall"]["recall@1"] or 0.0, after["overall"]["recall@1"] or 0.0
            verdict = f"overall recall@1 {new:.3f} (shadow) vs {old:.3f} (live), a drop of {old - new:.3f}"
            if old - new > max_drop:
                report.update(switched=False, reason=f"{verdict}: more than --max-drop {max_drop:g}, not switching")
                raise _refused(report)
            session.gateway.switch(shadow, timeout=timeout)
            report.update(switched=True, reason=f"{verdict}: within --max-drop {max_drop:g}, switched")
            caught = _catch_up(session, shadow, timeout=timeout, quiet=quiet)
            report["caught_up"] = caught["indexed"]
            session.gateway.optimize()  # the new live collection's search index, built now rather than at 20,000 writes
            live = shadow
        if drop_old:
            report["dropped"] = _drop_old(session, live, timeout=timeout)
    return report


def _ensure_shadow(settings: Any, shadow: str, model: Any) -> None:
    """The shadow collection's model record, written before anything is written to it (a run killed after this
    resumes into the same shadow); a shadow of that name from another model is refused."""
    from lookalike.worker.ownership import read_record, write_record

    recorded = read_record(settings, shadow)
    if recorded is not None:
        if recorded.vision.fingerprint != model.vision.fingerprint:
            raise ReindexFailed(f"collection {shadow!r} exists and belongs to another model")
        return
    if settings.qdrant_url:  # a server keeps the record in the collection: it must exist first
        from lookalike.worker.embed import model_dimension
        from lookalike.worker.store import open_collection

        store = open_collection(settings, shadow)
        try:
            store.ensure_collection(model_dimension(settings.model))
        finally:
            store.close()
    write_record(settings, shadow, model)


def _refused(report: dict[str, Any]) -> ReindexFailed:
    return ReindexFailed(str(report["reason"]), 1, report)


def _drop_old(session: Ingest, live: str, *, timeout: float) -> list[str]:
    """Delete the collection the live one replaced (the record keeps which), and say which."""
    from lookalike.worker.ownership import read_record, write_record

    settings = session.ctx.settings
    record = read_record(settings, live)
    if record is None or not record.replaces or record.replaces == live:
        return []
    session.gateway.drop(record.replaces, timeout=timeout)
    write_record(settings, live, dataclasses.replace(record, replaces=None))
    return [record.replaces]


def drop_old(services: Services, *, timeout: float, progress: ProgressFactory) -> list[str]:
    """`lookalike reindex --drop-old` alone."""
    from lookalike.worker.store import live_collection

    with Ingest(wait=True, note=services.note, progress=progress, broker=services.broker) as session:
        return _drop_old(session, live_collection(session.ctx.settings), timeout=timeout)
