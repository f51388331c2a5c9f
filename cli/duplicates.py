"""`lookalike duplicates`: the same product listed twice, as groups; the full scan; people's decisions.

The report reads Redis only (pairs, decisions, the registry's names and prices): it needs no worker. The scan
reads the store, so it runs on the store owner page by page (or in this process when no store worker runs).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from typing import Annotated, Any

import typer

from lookalike.cli.usage import fail, note

duplicates_app = typer.Typer(
    rich_markup_mode=None,
    invoke_without_command=True,
    help="Duplicate listings: groups of products that show the same photo (best evidence first), the full scan "
    "that finds them in an existing index, and people's decisions about them.",
)

CSV_COLUMNS = (
    "group", "group_score", "product_id", "name", "price", "product_url", "category", "image_url",
    "best_a", "best_b", "best_a_image", "best_b_image", "threshold", "threshold_source",
)  # fmt: skip
PRODUCT_COLUMNS = ("product_id", "name", "price", "product_url", "category", "image_url")
BEST_COLUMNS = ("a", "b", "a_image", "b_image", "threshold", "threshold_source")


def _fail(message: str, code: int = 2) -> typer.Exit:
    return fail(message, code)


def _note(message: str) -> None:
    note(message)


def _services() -> Any:
    """This command's broker, state and gateway (:class:`lookalike.app.services.Services`)."""
    from lookalike.app.broker import use_broker
    from lookalike.app.services import Services

    return Services.on(use_broker(_note).settings, _note)


def _context() -> Any:
    return _services().state


@duplicates_app.callback()
def duplicates(
    ctx: typer.Context,
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score", min=0.0, max=1.0, help="Report only pairs scoring at least this (raises, never lowers, "
            "the setting and the category overrides)."
        ),
    ] = None,
    category: Annotated[
        str | None, typer.Option("--category", help="Only groups with a product in this category (any level).")
    ] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many groups.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Show at most this many groups.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV, one row per product of each group.")] = False,
) -> None:
    """List groups of products that are duplicates of each other (connected pairs), best evidence first, each
    with its products' names, prices and URLs, the best-matching image pair and the threshold that applied."""
    if ctx.invoked_subcommand is not None:
        return
    if as_json and as_csv:
        raise _fail("choose one of --json and --csv")
    from lookalike.state.duplicate_groups import report

    state = _context()
    data = report(
        state.duplicates, state.registry, state.settings,
        min_score=min_score, category=category, offset=offset, limit=limit,
    )  # fmt: skip
    if as_json:
        print(json.dumps(data, ensure_ascii=False, indent=2))
    elif as_csv:
        _write_csv(data["groups"], offset)
    else:
        _print_groups(data)


def _write_csv(groups: list[dict[str, Any]], offset: int) -> None:
    writer = csv.writer(sys.stdout)
    writer.writerow(CSV_COLUMNS)
    for number, group in enumerate(groups, start=offset + 1):
        best = group["best_pair"]
        for product in group["products"]:
            row = [number, group["score"], *(product[key] for key in PRODUCT_COLUMNS)]
            writer.writerow(row + [best[key] for key in BEST_COLUMNS])


def _print_groups(data: dict[str, Any]) -> None:
    from rich.console import Console

    from lookalike.cli import render

    out = Console(soft_wrap=True)
    groups = data["groups"]
    if not groups:
        print("no duplicate groups (has `lookalike duplicates scan` run since the index was built?)")
        return
    for number, group in enumerate(groups, start=data["offset"] + 1):
        best = group["best_pair"]
        score = "marked same" if group["score"] is None else f"{group['score']:.4f}"
        print(
            f"group {number}: {len(group['products'])} products, best score {score} "
            f"(threshold {best['threshold']:g} from {best['threshold_source']})"
        )
        rows = [(p["product_id"], p["name"], p["price"], p["product_url"]) for p in group["products"]]
        out.print(render.table(("product", "name", "price", "url"), rows))
        if best["a_image"]:
            print(f"  best pair: {best['a']} {best['a_image']}")
            print(f"             {best['b']} {best['b_image']}")
        print()
    print(f"{len(groups)} of {data['total']} groups shown")


@duplicates_app.command("status")
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Count the duplicate groups, the products in them and the decisions; show the thresholds and the last
    scan."""
    from lookalike.state.duplicate_groups import Thresholds, build_groups, summary

    state = _context()
    thresholds = Thresholds.from_settings(state.settings)
    data = summary(build_groups(state.duplicates, state.registry, thresholds), state.duplicates, thresholds)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    print(f"groups     {data['groups']} ({data['products_in_groups']} products, {data['pairs_reported']} pairs)")
    print(f"decisions  {data['decisions']['distinct']} distinct, {data['decisions']['same']} same")
    overrides = "; ".join(f"{name}={value:g}" for name, value in data["category_min_scores"].items())
    print(f"threshold  {data['min_score']:g}" + (f" (categories: {overrides})" if overrides else ""))
    scan = data["scan"]
    if scan:
        where = "done" if scan.get("done") else f"interrupted at {scan.get('scanned')} of {scan.get('total')} points"
        print(f"scan       {where}, from score {scan.get('floor')}, {scan.get('pairs_recorded')} pairs recorded")
    else:
        print("scan       never run (`lookalike duplicates scan` checks an index built before this feature)")


@duplicates_app.command("mark")
def mark(
    first: Annotated[str, typer.Argument(help="A product id.")],
    second: Annotated[str, typer.Argument(help="Another product id.")],
    distinct: Annotated[
        bool, typer.Option("--distinct", help="They are different products: never report them.")
    ] = False,
    same: Annotated[bool, typer.Option("--same", help="They are the same product: keep them grouped.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Record a person's decision on two products. It survives re-ingests, scans, reindex and reconcile; marking
    the pair again replaces it."""
    from lookalike.state.duplicate_groups import unknown_products
    from lookalike.state.duplicates import DISTINCT, SAME

    if distinct == same:
        raise _fail("give exactly one of --distinct and --same")
    if first == second:
        raise _fail("give two different product ids")
    state = _context()
    unknown = unknown_products(state.registry, [first, second])
    if unknown:
        raise _fail(f"unknown product {', '.join(repr(p) for p in unknown)} (not in the registry)")
    made = state.duplicates.decide(first, second, DISTINCT if distinct else SAME)
    if as_json:
        print(json.dumps({"a": made.a, "b": made.b, "decision": made.decision, "at": made.at}))
    else:
        print(f"marked {made.a} and {made.b} {made.decision}")


@duplicates_app.command("scan")
def scan(
    restart: Annotated[
        bool, typer.Option("--restart", help="Start over instead of resuming an unfinished scan.")
    ] = False,
    page: Annotated[int, typer.Option("--page", min=1, max=10_000, help="Points checked per step.")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the scan's final state as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the store worker per page.")] = 600.0,
) -> None:
    """Check every stored point for near-identical images of other products (an index built before this feature,
    or after a threshold change), in pages, with a progress bar. Interrupted, it resumes where it stopped."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    services = _services()
    state = services.state
    before = state.duplicates.scan_state()
    if before and not before.get("done") and not restart:
        _note(f"resuming the scan at {before.get('scanned')} of {before.get('total')} points (--restart to start over)")
    route = services.gateway
    started = time.monotonic()
    progress = Progress(
        TextColumn("scan"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=as_json,
    )  # fmt: skip
    with progress:
        task = progress.add_task("scan", total=None)
        done = route.duplicates_scan_page(restart=restart, page=page, timeout=timeout)
        while True:
            progress.update(task, total=max(done["total"], done["scanned"]), completed=done["scanned"])
            if done["done"]:
                break
            done = route.duplicates_scan_page(restart=False, page=page, timeout=timeout)
    if as_json:
        print(json.dumps(done, indent=2))
        return
    print(
        f"scanned {done['scanned']} points in {time.monotonic() - started:.1f}s; {done['pairs_recorded']} image pairs "
        f"from score {done['floor']:g} (`lookalike duplicates` lists the groups)"
    )
