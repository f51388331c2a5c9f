"""One look for every command's usage line."""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand


class PlainUsage(TyperCommand):
    """Usage lines as people know them: ``lookalike ingest [OPTIONS] CATALOG`` (typer writes ``{CATALOG}``).
    Every lookalike command is declared with ``cls=PlainUsage``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces: list[str] = super().collect_usage_pieces(ctx)
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece for piece in pieces]
