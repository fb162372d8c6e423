"""`dualattn` sub-commands for train (filled in by the train work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to *app*."""
