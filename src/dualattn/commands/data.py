"""`dualattn data prepare|list`: build, cache and inspect datasets."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount the data tool (``dualattn.data.prepare.app``) as ``dualattn data``."""
    from dualattn.data.prepare import app as data_app

    app.add_typer(data_app, name="data", help="Prepare and inspect dualattn datasets.")
