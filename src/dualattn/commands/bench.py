"""`dualattn` sub-commands for bench (filled in by the bench work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to *app*."""
