"""The `lookalike` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from lookalike import __version__
from lookalike.app.broker import use_broker
from lookalike.app.services import Services
from lookalike.cli import render
from lookalike.cli.usage import PlainUsage, err, fail, note
from lookalike.state.errors import Misconfigured, Rejected, StoreError, Unavailable
from lookalike.state.search import QueryRejected, SearchRequest

app = typer.Typer(
    add_completion=False,
    # Plain tracebacks: rich ones print local variables, and locals can hold secrets.
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Reverse image search for e-commerce catalogues: ingest a catalogue, run workers, search by image.",
)
def command(**options: Any) -> Any:
    """``app.command`` with the plain usage line (every lookalike command is declared with it)."""
    return app.command(cls=PlainUsage, **options)


out = Console(soft_wrap=True)

# What a failure means to the shell, for every command: the first of an error's classes (most specific first)
# found here decides. 2: the input or a setting has to change; 3: something lookalike needs does not answer
# (no broker, no model, no worker, the store). Anything else is a bug, and shows its traceback.
EXIT_CODES: dict[type[BaseException], int] = {
    Misconfigured: 2,
    Rejected: 2,
    ValueError: 2,
    LookupError: 2,
    Unavailable: 3,
    StoreError: 3,
}


def services(*, start: bool = True, share: bool = False) -> Services:
    """This command's broker (resolved and checked) and what the application needs on it."""
    broker = use_broker(note, start=start, share=share)
    return Services.on(broker.settings, note, broker)


def _version(value: bool) -> None:
    if value:
        print(f"lookalike {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    from pydantic import ValidationError

    from lookalike.config.settings import get_settings, settings_error_line
    from lookalike.worker.logs import configure_logging

    try:
        settings = get_settings()
    except ValidationError as exc:  # a malformed LOOKALIKE_* variable: one line, exit 2, before anything runs
        raise fail(settings_error_line(exc), 2) from None
    configure_logging(settings.log_level)


# ------------------------------------------------------------------------------------------------ ingest
@command(short_help='Read a catalogue CSV and index its product images.')
def ingest(
    catalog: Annotated[
        Path, typer.Argument(metavar="CATALOG", help="Catalogue CSV, or a zip holding one CSV at any depth.")
    ],
    fraction: Annotated[float | None, typer.Option(help="Sample this share of the rows (0-1].")] = None,
    seed: Annotated[int, typer.Option(help="Random seed for --fraction.")] = 0,
    limit: Annotated[int | None, typer.Option(help="Keep only the first N rows (after sampling).")] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Show progress until every job is finished (and the jobs earlier runs left waiting)."
        ),
    ] = False,
    full: Annotated[bool, typer.Option("--full", help="Re-enqueue every image, even ones already indexed.")] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete products that are no longer in the catalogue.")
    ] = False,
    version: Annotated[
        int | None, typer.Option("--catalog-version", help="Version of this catalogue (default: now, in ms).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="With --wait: exit 1 if any image failed (default: if none was indexed).")
    ] = False,
) -> None:
    """Read a catalogue and enqueue one download-and-embed job per new product image.

    Re-running it enqueues only what changed since the last run (a price change updates the points in place);
    --full re-enqueues everything. With no broker configured and none at the default address, an embedded
    broker and local workers run the whole ingest in this command.

    Exit codes: 0 done; 1 waited, and images were enqueued but none was indexed (with --strict: any image
    failed); 2 a bad catalogue or option; 3 no broker, the broker out of memory, no model, a worker died, or no
    live worker consumed a queue the wait needed for LOOKALIKE_WAIT_DEADLINE seconds.
    """
    from lookalike.producer.catalog import CatalogError, read_catalog

    try:
        report = read_catalog(catalog, fraction=fraction, seed=seed, limit=limit)
    except CatalogError as exc:
        raise fail(str(exc)) from None

    from lookalike.app.ingest import Ingest

    with Ingest(wait=wait, note=note, progress=render.Bar) as session:
        summary = session.run(report, version=version, full=full, prune=prune, quiet=as_json)
        if session.waiting:
            summary.result = session.wait_until_done(summary.run_id, summary.images_enqueued, quiet=as_json)
    if as_json:
        print(json.dumps(summary.to_data(), indent=2))
    else:
        for line in render.ingest_summary_lines(summary.to_data()):
            print(line)
    result = summary.result
    if result is not None and summary.images_enqueued and (result.indexed == 0 or (strict and result.failed)):
        what = "no image was indexed" if result.indexed == 0 else f"{result.failed} image(s) failed"
        note(f"{what} (details: lookalike failures)")
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ worker
@command(short_help='Start the workers (downloads, embedding, the store).')
def worker(
    queues: Annotated[
        str | None,
        typer.Option(help="Comma-separated stages: fetch, embed, encode (queries), index, query (default: all)."),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Embedding processes (default: cores / LOOKALIKE_ONNX_THREADS).")
    ] = None,
    fetch_threads: Annotated[
        int | None, typer.Option(help="Download threads (default: LOOKALIKE_FETCH_CONCURRENCY).")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Start Celery workers: a thread pool for downloads and a process pool for embedding (both at idle priority,
    see LOOKALIKE_INGEST_SCHED_IDLE and LOOKALIKE_INGEST_NICENESS), the shoppers' own query encoding processes,
    and the store owner (queries first).

    With no options it consumes every queue, so one command runs a complete system on one machine.
    Start more of them (on this or other machines, against the same broker and a Qdrant server) to scale out.
    """
    from lookalike.app.local import start_worker

    code = start_worker(
        use_broker(note, share=True).settings,
        queues=queues, concurrency=concurrency, fetch_threads=fetch_threads, loglevel=loglevel, note=note
    )
    raise typer.Exit(code)


# ------------------------------------------------------------------------------------------------ search
CategoryOption = Annotated[
    str | None, typer.Option("--category", help="Only products in this category (any level of the A | B | C path).")
]
MinPriceOption = Annotated[float | None, typer.Option("--min-price", help="Only products priced at least this.")]
MaxPriceOption = Annotated[float | None, typer.Option("--max-price", help="Only products priced at most this.")]
MinScoreOption = Annotated[
    float | None,
    typer.Option("--min-score", help="Only results whose raw engine score (JSON's score, not match) is at least this."),
]
TopOption = Annotated[int, typer.Option("-k", "--top", help="How many products to return (1-100).")]
OffsetOption = Annotated[int, typer.Option("--offset", help="Skip this many products (pages: --offset 10 -k 10).")]
DiverseOption = Annotated[
    bool, typer.Option("--diverse", help="Re-rank for variety (MMR): near-identical variants do not fill a page.")
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the result list as JSON (with --facets: {results, facets, no_close_match, ...})."
    ),
]
SimilarJsonOption = Annotated[bool, typer.Option("--json", help="Print the result list as JSON.")]
TimeoutOption = Annotated[
    float | None, typer.Option(help="Seconds to wait for a worker (default: LOOKALIKE_QUERY_TIMEOUT).")
]


def _answer(request: SearchRequest, *, timeout: float | None, as_json: bool, facets: bool) -> None:
    """Send the request through the gateway (a worker, or this process when none runs) and print the answer.

    The request is checked before the broker is even looked up, so a bad value is the command's only line (the
    gateway checks it again, with the same rules from state/search.py, for callers that skip this)."""
    from lookalike.config.settings import get_settings
    from lookalike.state.search import CLOSE_MATCH

    request.validate(max_image_bytes=get_settings().query_max_bytes)
    data = services().gateway.search(request, timeout=timeout)
    if data.get("note"):
        note(data["note"])
    if data["results"] and data["no_close_match"]:
        best = render.percent(max(hit["match"] for hit in data["results"]))
        note(f"no close match: the best result matches {best} (a close match is {render.percent(CLOSE_MATCH)} or more)")
    if as_json:
        print(json.dumps(data if facets else data["results"], ensure_ascii=False))
        return
    if not data["results"]:
        print("no matches (is the catalogue ingested? are the filters too narrow?)")
    else:
        render.search_results(data["results"], out, offset=request.offset)
    if facets and data.get("facets"):
        render.facets(data["facets"], out)


def _image_request(image: str, *, max_bytes: int, **fields: Any) -> SearchRequest:
    """A search request for an image path or an http(s) URL (the file is read here, by the user's command:
    a worker never reads a path a caller chose)."""
    if image.startswith(("http://", "https://")):
        return SearchRequest(image_url=image, **fields)
    path = Path(image)
    if not path.is_file():
        raise fail(f"{image}: no such file (give an image path or an http(s) URL)")
    if path.stat().st_size > max_bytes:
        raise fail(f"{image}: larger than {max_bytes} bytes (LOOKALIKE_QUERY_MAX_BYTES)")
    return SearchRequest(image=path.read_bytes(), **fields)


@command(short_help='Find products by a photo (path or URL) or by words.')
def search(
    image: Annotated[
        str | None, typer.Argument(metavar="IMAGE", help="Image file path, or an http(s) URL.")
    ] = None,
    text: Annotated[str | None, typer.Option("--text", help="Search by words instead of an image.")] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="For words: hybrid (CLIP text and BM25 keywords, fused), semantic (CLIP text) or keyword (BM25)."
        ),
    ] = "hybrid",
    category: CategoryOption = None,
    min_price: MinPriceOption = None,
    max_price: MaxPriceOption = None,
    min_score: MinScoreOption = None,
    k: TopOption = 5,
    offset: OffsetOption = 0,
    diverse: DiverseOption = False,
    facets: Annotated[bool, typer.Option("--facets", help="Also count the matches per category.")] = False,
    as_json: JsonOption = False,
    timeout: TimeoutOption = None,
) -> None:
    """Find the catalogue products that look like IMAGE, or match --text words: one entry per product (its
    best image), best first. Filters narrow every kind of query; a bad value is a one-line error naming it."""
    from lookalike.config.settings import get_settings
    from lookalike.state.search import Filters

    if image is None and text is None:
        raise fail("give an IMAGE (a path or an http(s) URL) or --text WORDS")
    if image is not None and text is not None:
        raise fail("give an IMAGE or --text WORDS, not both")
    filters = Filters(category=category, min_price=min_price, max_price=max_price, min_score=min_score)
    fields: dict[str, Any] = {"k": k, "offset": offset, "filters": filters, "diverse": diverse, "facets": facets}
    if text is None:
        assert image is not None
        request = _image_request(image, max_bytes=get_settings().query_max_bytes, **fields)
    else:
        request = SearchRequest(text=text, mode=mode, **fields)  # the mode is checked with the rest, once
    _answer(request, timeout=timeout, as_json=as_json, facets=facets)


@command(short_help='More like this: products that look like a product.')
def similar(
    product_id: Annotated[str, typer.Argument(metavar="PRODUCT_ID", help="A catalogue product id.")],
    category: CategoryOption = None,
    min_price: MinPriceOption = None,
    max_price: MaxPriceOption = None,
    min_score: MinScoreOption = None,
    k: TopOption = 5,
    offset: OffsetOption = 0,
    diverse: DiverseOption = False,
    as_json: SimilarJsonOption = False,
    timeout: TimeoutOption = None,
) -> None:
    """More like this: the products that look most like PRODUCT_ID, from its own stored vectors (no download,
    no embedding), without the product itself. An unknown id is an error (exit 2)."""
    from lookalike.state.search import Filters

    filters = Filters(category=category, min_price=min_price, max_price=max_price, min_score=min_score)
    request = SearchRequest(product_id=product_id, k=k, offset=offset, filters=filters, diverse=diverse)
    _answer(request, timeout=timeout, as_json=as_json, facets=False)


# ------------------------------------------------------------------------------------------------ status
@command(short_help='Runs, queues, workers and the model in use.')
def status(
    run: Annotated[str | None, typer.Argument(metavar="RUN", help="A run id (default: the latest runs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    runs: Annotated[int, typer.Option(help="How many recent runs to show.")] = 5,
) -> None:
    """Runs (progress, throughput, ETA), queue depths and ages, event counts, and the live workers."""
    from lookalike.app.status import collect_status

    session = services()
    data = collect_status(session.state, session.gateway, run, runs)
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        render.status(data, out)


# ---------------------------------------------------------------------------------------------- failures
@command(short_help='List the images that failed, or retry them.')
def failures(
    reason: Annotated[str | None, typer.Option(help="Only failures with this reason (e.g. http_404, http).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list, one object per failed image.")] = False,
    retry: Annotated[bool, typer.Option("--retry", help="Re-enqueue the (matching) failed images.")] = False,
    limit: Annotated[int | None, typer.Option(help="Show at most N.")] = None,
) -> None:
    """List the images that failed for good (product, URL, stage, reason, time), or re-enqueue them."""
    from lookalike.app.maintenance import list_failures, retry_failures, waiting_without_workers

    session = services()
    if retry:
        summary = retry_failures(session, reason)
        if summary["requeued"] and not summary["workers"]:
            note(
                f"no worker is running: the {summary['requeued']} images wait in the queue until you start "
                "`lookalike worker` (or `lookalike ingest --wait`); `lookalike status` shows them"
            )
        if as_json:
            print(json.dumps(summary))
        else:
            print(
                f"re-enqueued {summary['requeued']} images as run {summary['run_id']}"
                + (
                    f"; {summary['dropped']} dropped (product deleted or image removed since)"
                    if summary["dropped"]
                    else ""
                )
            )
        return
    items = list_failures(session, reason, limit)
    if as_json:
        print(json.dumps(items, ensure_ascii=False))
        return
    if not items:
        waiting = waiting_without_workers(session)
        queued = f" ({waiting} jobs wait in the fetch queue: no worker is running; start `lookalike worker`)"
        print("no failures recorded" + (queued if waiting else ""))
        return
    render.failures(items, out)


# ------------------------------------------------------------------------------------------- operations
@command(short_help='Start Flower (the Celery dashboard) with a login.')
def flower(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 5555,
    address: Annotated[
        str | None, typer.Option(help="Address to listen on (default: LOOKALIKE_FLOWER_ADDRESS, 127.0.0.1).")
    ] = None,
) -> None:
    """Start Flower on lookalike's workers, with basic auth from LOOKALIKE_FLOWER_BASIC_AUTH (user:password).

    It refuses to listen on a non-loopback address without a login unless LOOKALIKE_FLOWER_ALLOW_UNAUTHENTICATED
    is true. The login reaches Flower through its environment, never its command line.
    """
    from lookalike.app.operations import start_flower

    # Flower replaces this process: it can use a running embedded broker only.
    start_flower(use_broker(note, start=False).settings, port, address, note)


@command(short_help='Serve Prometheus metrics at /metrics.')
def metrics(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to serve /metrics on (0: any free one).")] = 9808,
    address: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve Prometheus metrics at /metrics: counters, stage-time histograms, queue depths and ages.

    Every worker writes to Redis, so one exporter reports the whole cluster. See README, "Operating".
    """
    from lookalike.app.operations import serve_metrics_forever

    serve_metrics_forever(services(share=True), address, port)


# ------------------------------------------------------------------------------------------------ events
@command(short_help='Apply catalogue change events from the Redis Stream.')
def listen(
    consumer: Annotated[
        str | None, typer.Option(help="Consumer name in the group (default: this host's name); keep it stable.")
    ] = None,
    stop_when_idle: Annotated[
        float | None, typer.Option(help="Exit once the stream has had nothing new for this many seconds.")
    ] = None,
    batch: Annotated[int, typer.Option(help="Events read and acknowledged together.")] = 100,
) -> None:
    """Consume catalogue change events from the Redis Stream and keep the index in step.

    Each event is acknowledged only after its work is enqueued; a restarted listener re-reads its own
    unacknowledged events, and events a dead listener left pending are claimed after LOOKALIKE_EVENTS_CLAIM_IDLE.
    """
    from lookalike.app.events import run_listener

    run_listener(services(share=True), consumer, stop_when_idle, batch)


@command(short_help='Publish change events (JSON lines), or list rejected ones.')
def events(
    file: Annotated[
        str | None, typer.Argument(metavar="FILE", help="JSON lines file of events to publish ('-' = stdin).")
    ] = None,
    rejected: Annotated[
        bool, typer.Option("--rejected", help="List the events the listener rejected instead.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Publish change events (one JSON object per line) to the event stream, after validating each.

    Lines that are not valid events are reported with their line number and reason and are not published;
    the exit code is then 1.
    """
    from lookalike.app.events import list_rejected_events, publish_events_file

    session = services()
    if rejected:
        items = list_rejected_events(session)
        if as_json:
            print(json.dumps(items, ensure_ascii=False))
        else:
            for item in items:
                print(f"{item['stream_id']}  {item['reason']}: {item.get('field') or '-'}  {item.get('detail') or ''}")
            if not items:
                print("no rejected events")
        return
    if file is None:
        raise fail("give a JSON lines file (or - for stdin), or --rejected")
    try:
        summary = publish_events_file(session, file)
    except OSError as exc:
        raise fail(f"{file}: {exc.strerror or exc}") from None
    if as_json:
        print(json.dumps(summary))
    else:
        print(f"published {summary['published']} events to {summary['stream']}; rejected {summary['rejected']}")
    if summary["rejected"]:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------- reindex
@command(short_help="Move the index to another model, or upgrade an old one.")
def reindex(
    model: Annotated[
        Path | None, typer.Option("--model", help="Move the index to this vision model directory.")
    ] = None,
    text_model: Annotated[
        Path | None, typer.Option("--text-model", help="With --model: and to this text model directory.")
    ] = None,
    max_drop: Annotated[
        float, typer.Option("--max-drop", help="With --model: the largest drop of overall recall@1 allowed.")
    ] = 0.02,
    sample: Annotated[int, typer.Option(help="With --model: images sampled by the evaluation of both.")] = 100,
    seed: Annotated[int, typer.Option(help="With --model: the evaluation's seed.")] = 0,
    drop_old: Annotated[
        bool, typer.Option("--drop-old", help="Delete the collection the live one replaced (after --model).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the store worker.")] = 3600.0,
) -> None:
    """Re-embed the catalogue with another model (--model), or upgrade an index built by an earlier release to
    the current layout (no option).

    --model DIR: a shadow collection is filled with the new model by the running workers (progress bar, status,
    failures as for an ingest) while the live one answers queries; it catches up with every change made
    meanwhile; `lookalike eval` then runs on both with the same sample, and the switch happens only if the
    shadow's overall recall@1 is at most --max-drop below the live one's. The old collection is kept until
    --drop-old. Interrupted, run it again: it resumes; after completion it does nothing.

    Without --model: copies every point's stored vector into a new collection with its keyword vector added (no
    download, no embedding), then switches once the copy is complete.

    Exit codes: 0 switched, or nothing to do; 1 the switch was refused (the report says why; the live collection
    is as it was); 2 bad option; 3 no broker or no store worker.
    """
    if model is not None:
        _reindex_model(model, text_model, max_drop, sample, seed, drop_old, as_json, timeout)
        return
    if text_model is not None:
        raise fail("--text-model needs --model")
    if drop_old:
        from lookalike.app.reindexing import drop_old as drop_old_collection

        dropped = drop_old_collection(services(), timeout=timeout, progress=render.Bar)
        print(json.dumps({"dropped": dropped}) if as_json else f"dropped: {', '.join(dropped) or 'nothing'}")
        return
    from lookalike.app.maintenance import reindex as reindex_index

    done = reindex_index(services(), timeout=timeout)
    if as_json:
        print(json.dumps(done, indent=2))
    elif done["upgraded"]:
        print(f"upgraded: {done['points']} points copied to {done['collection']} (was {done['previous']}), now live")
    else:
        print(f"nothing to do: {done['collection']} is already in the current layout ({done['points']} points)")


def _reindex_model(
    model: Path,
    text_model: Path | None,
    max_drop: float,
    sample: int,
    seed: int,
    drop_old: bool,
    as_json: bool,
    timeout: float,
) -> None:
    if not 0 <= max_drop <= 1:
        raise fail("--max-drop must be between 0 and 1")
    if not 1 <= sample <= 10_000:
        raise fail("--sample must be between 1 and 10000")
    from lookalike.app.reindexing import ReindexFailed, check_model_directories, reindex_model

    try:
        check_model_directories(model, text_model)  # bad input is the command's only line
        report = reindex_model(
            services(),
            model_dir=model,
            text_model_dir=text_model,
            max_drop=max_drop,
            sample=sample,
            seed=seed,
            drop_old=drop_old,
            timeout=timeout,
            progress=render.Bar,
            quiet=as_json,
        )
    except ReindexFailed as exc:
        if exc.report is None:
            raise fail(str(exc), exc.code) from None
        report = exc.report
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        for line in render.reindex_lines(report):
            print(line)
    if not report.get("switched") and "shadow" in report:
        raise typer.Exit(1)


# -------------------------------------------------------------------------------------------------- eval
@command(name="eval", short_help="Retrieval quality on your own catalogue (no labels).")
def evaluate(
    sample: Annotated[int, typer.Option(help="How many indexed images to sample (1-10000).")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed: the sample and every transform's strength.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Retrieval quality on your own catalogue, no labels needed: how often a changed copy of an indexed image
    (cropped, scaled down, JPEG re-encoded, brighter or darker, rotated, letterboxed) finds its own product
    (recall@1, recall@5, MRR, per change and overall), and how often a product's name or its first three words
    find it in the top 5 (keyword, semantic, hybrid). Queries go where `lookalike search` sends them.

    Exit codes: 0 done; 2 bad option or nothing indexed; 3 no broker, or no sampled image could be downloaded.
    """
    if not 1 <= sample <= 10_000:
        raise fail("--sample must be between 1 and 10000")
    from lookalike.app.evaluation import EvalFailed, run_eval

    try:
        report = run_eval(services(), sample=sample, seed=seed)
    except EvalFailed as exc:
        raise fail(str(exc), exc.code) from None
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        render.evaluation(report, out)


# ------------------------------------------------------------------------------------------------- serve
@command(short_help='Serve the HTTP API and the search page.')
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: LOOKALIKE_API_ADDRESS).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to listen on (default: LOOKALIKE_API_PORT, 8080).")
    ] = None,
) -> None:
    """The HTTP API (POST /v1/search, GET /v1/products/ID/similar, GET /v1/duplicates, POST
    /v1/duplicates/decisions, /healthz, /readyz, /metrics, /docs) and the search page at / (with its Duplicates
    view).

    Queries go to the workers through the broker (embedding on the shoppers' encode processes, search on the
    store owner); with no worker running at all, this process answers them itself and says so in its log.
    Request headers must arrive within LOOKALIKE_API_READ_TIMEOUT, bodies within LOOKALIKE_API_BODY_TIMEOUT, and
    at most LOOKALIKE_API_MAX_CONNECTIONS are served at once; on the public internet, put a reverse proxy in front.
    A port in use or an address this machine does not have is a one-line error (exit 2) before anything is
    served.
    """
    import uvicorn

    from lookalike.api import create_app, uvicorn_log_config
    from lookalike.api.server import uvicorn_options
    from lookalike.app.gateway import Gateway
    from lookalike.app.operations import listening_socket
    from lookalike.config.settings import get_settings

    settings = get_settings()
    host = host or settings.api_address
    port = port or settings.api_port
    try:
        listener = listening_socket(host, port)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    settings = use_broker(note, share=True).settings
    config = uvicorn.Config(
        # The gateway logs once that it answers in this process; a reading of the live workers serves a second.
        create_app(Gateway(settings, workers_max_age=1.0), settings),
        host=host,
        port=port,
        log_config=uvicorn_log_config(settings.log_level),
        access_log=False,
        **uvicorn_options(settings),
    )
    note(f"serving the API and the page on http://{host}:{port}/")
    uvicorn.Server(config).run(sockets=[listener])


# --------------------------------------------------------------------------------------------- reconcile
@command(short_help='Repair the index whatever was lost, and say what it did.')
def reconcile(
    catalog: Annotated[
        Path | None,
        typer.Argument(
            metavar="CATALOG", help="The current catalogue: register it and delete products it no longer lists."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the store worker's audit.")] = 600.0,
) -> None:
    """Make the index converge whatever was lost (the queue, the registry or the store).

    Compares the store with the registry (and, given CATALOG, the registry with the catalogue) and repairs both
    ways: points of products that are deleted or unknown are deleted, registered images with no point are
    enqueued. Prints what it did. Safe to run at any time and to run again.
    """
    from lookalike.app.maintenance import reconcile_index

    report = None
    if catalog is not None:
        from lookalike.producer.catalog import CatalogError, read_catalog

        try:
            report = read_catalog(catalog)
        except CatalogError as exc:
            raise fail(str(exc)) from None
    done = reconcile_index(services(), report, timeout=timeout)
    if as_json:
        print(json.dumps(done, indent=2))
        return
    print(f"run       {done['run_id']}")
    if "catalog" in done:
        print(f"catalog   {', '.join(f'{v} {k}' for k, v in done['catalog'].items() if v is not None)}")
    print(
        f"store     {done['store_points']} points; deleted {done['orphan_points_deleted']} orphan points "
        f"of {done['orphan_products']} products"
    )
    print(f"enqueued  {done['missing_images_enqueued']} images that had no point")


def _add_model_commands() -> None:
    from lookalike.cli.duplicates import duplicates_app
    from lookalike.cli.images import images_app
    from lookalike.cli.models import model_app

    app.add_typer(model_app, name="model", short_help="Make an int8 model, or compare two on your catalogue.")
    app.add_typer(images_app, name="images", short_help="Serve catalogue images from this machine (offline use).")
    app.add_typer(duplicates_app, name="duplicates", short_help="Find products listed twice; record decisions.")


_add_model_commands()


def main() -> None:
    """Run the command; a failure with a meaning (see EXIT_CODES) is one line on stderr and its exit code."""
    from lookalike.app.broker import as_lookalike_error

    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except _CLICK_ERRORS as exc:
        _usage_failed(exc)
    except Exception as exc:
        known = as_lookalike_error(exc) or exc
        code = exit_code(known)
        if code is None:
            raise
        err.print(f"error: {error_line(known)}", markup=False, highlight=False)
        sys.exit(code)
    sys.exit(code if isinstance(code, int) else 0)


# The parser's errors (typer ships its own copy of click): found from a public class, whichever copy it is.
_CLICK_ERRORS: tuple[type[Exception], ...] = tuple(
    cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"
)


def _usage_failed(exc: Any) -> None:
    """A bad option or argument: one line naming it and where the help is, exit 2 (click prints four)."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `lookalike model` alone: the help is the answer
        exc.show()
        sys.exit(exc.exit_code)
    context = getattr(exc, "ctx", None)
    where = f" (see {context.command_path} --help)" if context is not None else ""
    err.print(f"error: {exc.format_message()}{where}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(2 if exc.exit_code == 2 else exc.exit_code)


def exit_code(exc: BaseException) -> int | None:
    return next((EXIT_CODES[cls] for cls in type(exc).__mro__ if cls in EXIT_CODES), None)


def error_line(exc: BaseException) -> str:
    if isinstance(exc, QueryRejected):
        return f"query refused: {exc}"
    return str(exc)


if __name__ == "__main__":
    main()
