"""`dualattn bench ...`: efficiency benchmarks (see ``dualattn.bench``)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``bench`` group (``dualattn bench attention``) to *app*."""
    from dualattn.bench.cli import attention

    bench = typer.Typer(help="Efficiency benchmarks.", no_args_is_help=True)
    bench.command("attention")(attention)
    from dualattn.bench.train_step_cli import train_step

    bench.command("train-step")(train_step)
    app.add_typer(bench, name="bench")
