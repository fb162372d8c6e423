"""`dualattn bench ...`: efficiency benchmarks (see ``dualattn.bench``).

The group is mounted lazily: ``dualattn.bench`` (torch) is imported only when
a bench command or ``dualattn bench --help`` runs.
"""

from __future__ import annotations

import typer

from dualattn.commands import lazy_group

HELP = "Efficiency benchmarks."


def build() -> typer.Typer:
    """The ``bench`` group with its commands (imports ``dualattn.bench``)."""
    from dualattn.bench.cli import attention
    from dualattn.bench.train_step_cli import train_step

    bench = typer.Typer(help=HELP, no_args_is_help=True)
    bench.command("attention")(attention)
    bench.command("train-step")(train_step)
    return bench


def register(app: typer.Typer) -> None:
    """Add the ``bench`` group (``dualattn bench attention | train-step``) to *app*."""
    app.add_typer(lazy_group("dualattn.commands.bench:build", HELP), name="bench")
