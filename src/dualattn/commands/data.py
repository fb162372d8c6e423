"""`dualattn data prepare|list`: build, cache and inspect datasets.

Mounted lazily: ``dualattn.data`` (torch, numpy) is imported only when a data
command or ``dualattn data --help`` runs.
"""

from __future__ import annotations

import typer

from dualattn.commands import lazy_group

HELP = "Prepare and inspect dualattn datasets."


def register(app: typer.Typer) -> None:
    """Mount the data tool (``dualattn.data.prepare.app``) as ``dualattn data``."""
    app.add_typer(lazy_group("dualattn.data.prepare:app", HELP), name="data")
