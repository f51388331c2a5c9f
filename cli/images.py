"""`lookalike images`: catalogue images a machine without internet can fetch (a localized copy of a catalogue,
and a small file server for it or for any directory of images)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from lookalike.cli.usage import PlainUsage, fail, note

images_app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Serve catalogue images from this machine: for offline machines, demos and trials.",
)

DEFAULT_PORT = 8700



@images_app.command(
    "localize", cls=PlainUsage, short_help="Copy a catalogue with its image URLs moved to this machine."
)
def localize(
    catalog: Annotated[Path, typer.Argument(metavar="CATALOG", help="Catalogue CSV (or a zip holding one).")],
    out: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="Where to write catalog.csv and the images.")],
    limit: Annotated[int | None, typer.Option(min=1, help="Keep only the first N rows.")] = None,
    base_url: Annotated[
        str, typer.Option(help="Where `lookalike images serve OUT_DIR` will serve the images.")
    ] = f"http://127.0.0.1:{DEFAULT_PORT}",
) -> None:
    """Write OUT_DIR/catalog.csv, a copy of CATALOG whose image URLs point under --base-url (same paths), and
    one generated image per URL under OUT_DIR at its path (the originals are never fetched). Serve them with
    `lookalike images serve OUT_DIR`, then ingest OUT_DIR/catalog.csv: the whole pipeline runs with no
    internet. The generated images are stand-ins: what looks alike only means something with the real ones."""
    from lookalike.producer.catalog import CatalogError
    from lookalike.producer.localize import localize as localize_catalog

    try:
        done = localize_catalog(catalog, out, base_url, limit=limit)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"{out}: {exc.strerror or exc}") from None
    print(f"wrote {done.catalog} ({done.rows} rows) and {done.image_files} images under {done.directory}")
    port = urlsplit(base_url).port
    shown = f" --port {port}" if port and port != DEFAULT_PORT else ""
    print(f"serve them: lookalike images serve {done.directory}{shown}")
    note("loopback image URLs need LOOKALIKE_FETCH_ALLOW_NETWORKS=127.0.0.0/8 for ingest and the workers")


@images_app.command(
    "serve", cls=PlainUsage, short_help="Serve a directory of images over HTTP until Ctrl-C."
)
def serve(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="The directory to serve (files only).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = DEFAULT_PORT,
) -> None:
    """Serve the files under DIR read-only (GET and HEAD) on http://HOST:PORT/, so a catalogue whose image
    URLs point there (`lookalike images localize`, or your own photos) can be ingested on a machine with no
    internet. A port in use is a one-line error (exit 2)."""
    from lookalike.app.operations import serve_directory

    if not directory.is_dir():
        raise fail(f"{directory}: no such directory")
    try:
        serve_directory(directory, host, port, note)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
