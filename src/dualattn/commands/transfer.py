"""`dualattn` sub-commands for transfer (filled in by the transfer work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to *app*."""
