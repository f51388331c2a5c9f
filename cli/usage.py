"""How every command speaks: its usage line, its notes and its one-line errors (stderr), whichever sub-app
declares it."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console
from typer.core import TyperCommand

err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Say ``error: message`` on one line; raise what this returns to exit with ``code``."""
    err.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


def note(message: str) -> None:
    err.print(f"lookalike: {message}", markup=False, highlight=False)


class PlainUsage(TyperCommand):
    """Usage lines as people know them: ``lookalike ingest [OPTIONS] CATALOG`` (typer writes ``{CATALOG}``).
    Every lookalike command is declared with ``cls=PlainUsage``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces: list[str] = super().collect_usage_pieces(ctx)
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece for piece in pieces]
