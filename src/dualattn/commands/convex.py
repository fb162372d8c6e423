"""`dualattn` sub-commands for convex (filled in by the convex work)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to *app*."""
