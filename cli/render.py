"""How the commands' results look in a terminal. Catalogue text (names, URLs, reasons) comes from outside: it
is always put into tables as plain ``Text``, never parsed as Rich markup, so ``Widget [/ 2 pack]`` prints as
written and ``[link=...]`` cannot inject a terminal hyperlink."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text


def _cell(value: Any) -> Text:
    return Text("" if value is None else str(value))


def table(columns: tuple[str, ...], rows: list[tuple[Any, ...]], *, title: str | None = None) -> Table:
    shown = Table(title=title, show_edge=False)
    for column in columns:
        shown.add_column(column, overflow="fold")
    for row in rows:
        shown.add_row(*(_cell(value) for value in row))
    return shown


def _counts(counts: dict[str, int], skip: str = "") -> str:
    return ", ".join(f"{value} {name}" for name, value in counts.items() if name != skip)


def ingest_summary_lines(summary: dict[str, Any]) -> list[str]:
    images = summary["image_entries"]
    products = summary["products"]
    skipped = summary["rows_skipped"]
    lines = [
        f"run       {summary['run_id']}",
        f"catalog   {summary['source']} ({summary['encoding']})",
        f"rows      {summary['rows_read']} read, {summary['rows_selected']} selected, "
        f"{summary['malformed_lines']} malformed lines skipped by the CSV parser",
        f"products  {products['total']} ({_counts(products, skip='total') or 'none'})",
        f"images    {summary['images_enqueued']} enqueued; of {images['entries']} image entries: "
        f"{images['kept']} usable, {images['placeholders']} placeholders, {images['duplicates']} duplicates, "
        f"{images['invalid']} invalid, {images['empty']} empty, {images['in_skipped_rows']} in skipped rows",
        f"skipped   {sum(skipped.values())} rows"
        + (f" ({', '.join(f'{k}: {v}' for k, v in skipped.items())})" if skipped else ""),
    ]
    if summary.get("reconciled_products"):
        lines.append(f"updated   {summary['reconciled_products']} products in place (payload or removed images)")
    if summary.get("pruned") is not None:
        lines.append(f"pruned    {summary['pruned']} products no longer in the catalogue")
    if summary.get("earlier_pending"):
        waited = summary.get("result") is not None
        lines.append(
            f"earlier   {summary['earlier_pending']} jobs from earlier runs were still waiting"
            + ("; waited for them too" if waited else "")
        )
    result = summary.get("result")
    if result:
        failed = result.get("failed_by_reason") or {}
        # A rate only for images that were indexed: failures are fast, and "4.8 images/s" for none misleads.
        indexed, seconds = result["indexed"], result["seconds"]
        rate = f" ({indexed / seconds:.1f} images/s)" if indexed and seconds else ""
        lines.append(
            f"done      {result['indexed']} indexed, {result['failed']} failed, {result['superseded']} superseded"
            f" in {result['seconds']:.1f}s{rate}"
        )
        if failed:
            lines.append("failed    " + ", ".join(f"{k}: {v}" for k, v in sorted(failed.items())))
            lines.append("          (details: lookalike failures --json; retry: lookalike failures --retry)")
    return lines


NAME_WIDTH = 60


def shorten(text: str, width: int = NAME_WIDTH) -> str:
    """At most ``width`` characters, cut at a word boundary when one is near, with an ellipsis when cut."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space >= width // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + "…"


def percent(match: float) -> str:
    return f"{round(match * 100):d}%"


WIDE = 120  # columns from which the image URL gets its own column


def search_results(results: list[dict[str, Any]], console: Console, *, offset: int = 0) -> None:
    """Ranks continue from ``offset`` (page 2 of 5 starts at 6); ``match`` is the 0-1 value people read, as a
    percentage (the raw engine score is in ``--json``). The image URL shows on terminals of WIDE columns or
    more; on narrower ones it would wrap every row (``--json`` always has it)."""
    wide = console.width >= WIDE
    rows = [
        (rank, percent(float(hit.get("match") or 0.0)), hit["product_id"], shorten(str(hit["name"] or "")))
        + ((hit["image_url"],) if wide else ())
        for rank, hit in enumerate(results, offset + 1)
    ]
    console.print(table(("#", "match", "product id", "name") + (("image",) if wide else ()), rows))


def facets(counts: dict[str, int], console: Console) -> None:
    """The category tree: each path under its parent, indented by level, most products first."""
    children: dict[str, list[str]] = {}
    for path in counts:
        parent = path.rsplit(" | ", 1)[0] if " | " in path else ""
        children.setdefault(parent, []).append(path)
    rows: list[tuple[str, int]] = []

    def walk(parent: str, depth: int) -> None:
        for path in sorted(children.get(parent, []), key=lambda p: (-counts[p], p)):
            rows.append(("  " * depth + path.rsplit(" | ", 1)[-1], counts[path]))
            walk(path, depth + 1)

    walk("", 0)
    console.print(table(("category", "products"), rows, title="categories"))


def failures(items: list[dict[str, Any]], console: Console) -> None:
    rows = [(i["time"], i["stage"], i["reason"], i["product_id"], i["image_url"]) for i in items]
    console.print(table(("time", "stage", "reason", "product id", "url"), rows))


def _rate(per_second: float) -> str:
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.1f}"


def _duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h26m``: short enough for a narrow column."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def status(data: dict[str, Any], console: Console) -> None:
    for condition in data.get("conditions", []):
        # First, and alone on its line: what stops work now (a full disk, a stopped pool, a full broker).
        console.print(str(condition["message"]), markup=False, highlight=False, style="bold red")
    # Short headers that never wrap: the table fits 80 columns with a whole run id.
    runs = Table(title="runs", show_edge=False, box=box.SIMPLE_HEAD, collapse_padding=True)
    runs.add_column("run", no_wrap=True, min_width=20)
    for column in ("status", "done", "indexed", "failed", "queued", "img/s", "ETA"):
        runs.add_column(column, no_wrap=True, justify="left" if column == "status" else "right")
    for run in data["runs"]:
        eta = run["eta_seconds"]
        runs.add_row(
            *(
                _cell(value)
                for value in (
                    run["run_id"],
                    run["status"],
                    f"{run['progress'] * 100:.1f}%",
                    run["indexed"],
                    run["failed"],
                    run["enqueued"],
                    _rate(run["images_per_second"]) if run["indexed"] else "-",
                    "-" if eta is None else _duration(eta),
                )
            )
        )
    console.print(runs)
    queue_rows = [
        (name, queue["depth"], "-" if queue["oldest_age_seconds"] is None else f"{queue['oldest_age_seconds']:.1f}")
        for name, queue in data["queues"].items()
    ]
    console.print(table(("queue", "waiting", "oldest (s)"), queue_rows, title="queues"))
    worker_rows = [(node, ", ".join(queues)) for node, queues in data["workers"].items()] or [("(none answering)", "")]
    console.print(table(("worker", "queues"), worker_rows, title="workers"))
    model = data.get("model") or {}
    if model:
        console.print(
            f"model: {model.get('vision')} (text: {model.get('text')}); "
            + (
                f"providers {', '.join(model.get('providers', []))}, {model.get('embedding_processes')} embedding "
                f"processes x {model.get('threads_per_process')} threads on {model.get('usable_cpus')} usable CPUs"
                if "providers" in model
                else str(model.get("error"))
            ),
            markup=False,
            highlight=False,
        )
    ownership = data.get("collection_model") or {}
    if ownership:
        recorded = ownership.get("recorded")
        if recorded:
            console.print(
                f"collection {ownership['collection']}: vision model {recorded['vision']['fingerprint']}, "
                f"text model {recorded['text']['fingerprint']}"
                + (" (adopted: made before collections recorded their model)" if recorded.get("adopted") else ""),
                markup=False,
                highlight=False,
            )
        else:
            console.print(
                f"collection {ownership['collection']}: no model recorded yet "
                + (f"({ownership['error']})" if "error" in ownership else "(recorded when the store owner opens it)"),
                markup=False,
                highlight=False,
            )
        for line in ownership.get("mismatch", []):
            console.print(f"MODEL MISMATCH: {line}", markup=False, highlight=False)
    events = data["events"]
    console.print(
        f"events: {events or 'none'}   failures recorded: {data['failures_recorded']}   "
        f"products registered: {data['products_registered']}",
        markup=False,
        highlight=False,
    )


class Bar:
    """One rich progress bar on stderr, as the application's ingest drives it (see ``lookalike.app.ingest``)."""

    def __init__(self, description: str, total: int, hidden: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=hidden,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> Bar:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)

    def advance(self, count: int) -> None:
        self._progress.advance(self._task, count)

    def show(self, completed: int, description: str) -> None:
        self._progress.update(self._task, completed=completed, description=description)


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def evaluation(report: dict[str, Any], console: Console) -> None:
    """`lookalike eval`: one row per transform and overall, then recall@5 of the words per mode."""
    images = report["images"]
    rows = [
        (name, data["queries"], _metric(data["recall@1"]), _metric(data["recall@5"]), _metric(data["mrr"]))
        for name, data in images["per_transform"].items()
    ]
    overall = report["overall"]
    rows.append(
        (
            "overall",
            overall["queries"],
            _metric(overall["recall@1"]),
            _metric(overall["recall@5"]),
            _metric(overall["mrr"]),
        )
    )
    title = (
        f"images: {images['queried']} sampled from {report['collection']} (seed {report['seed']}); "
        "overall = the six changes, not the original"
    )
    console.print(table(("query image", "queries", "recall@1", "recall@5", "MRR"), rows, title=title))
    words = report["words"]
    word_rows = [
        (kind, words["queries"][kind], *(_metric(modes[mode]) for mode in ("keyword", "semantic", "hybrid")))
        for kind, modes in words["recall@5"].items()
    ]
    console.print(
        table(
            ("words", "queries", "keyword", "semantic", "hybrid"),
            word_rows,
            title=f"words: recall@5 of {words['products']} products' names",
        )
    )
    errors = overall["errors"] + words["errors"]
    notes = [f"{images['not_downloaded']} sampled image(s) could not be downloaded"] if images["not_downloaded"] else []
    if errors:
        notes.append(f"{errors} quer(ies) refused (counted as misses)")
    models = report.get("models")
    if models:
        notes.append(f"models: vision {models['vision']}, text {models['text']}")
    for line in notes:
        console.print(Text(line))


def reindex_lines(report: dict[str, Any]) -> list[str]:
    """`lookalike reindex --model`: what was filled, both evaluations, the verdict and why."""
    lines = [f"live      {report['live']}"]
    if "shadow" in report:
        filled = report.get("filled", {})
        lines.append(
            f"shadow    {report['shadow']}: {filled.get('points', 0)} points; {filled.get('indexed', 0)} indexed in "
            f"{filled.get('rounds', 0)} round(s), {filled.get('failed', 0)} failed"
        )
    for name, data in (report.get("eval") or {}).items():
        overall = data["overall"]
        lines.append(
            f"eval      {name:6s} recall@1 {overall['recall@1']:.3f}  recall@5 {overall['recall@5']:.3f}  "
            f"MRR {overall['mrr']:.3f}  ({data['images']['queried']} images, seed {data['seed']})"
        )
    lines.append(("switched  " if report.get("switched") else "kept      ") + str(report.get("reason", "")))
    if report.get("caught_up"):
        lines.append(f"caught up {report['caught_up']} image(s) that reached only the old collection")
    if report.get("dropped"):
        lines.append(f"dropped   {', '.join(report['dropped'])}")
    return lines
