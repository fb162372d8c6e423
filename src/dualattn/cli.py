"""The ``dualattn`` command.

Each group of sub-commands lives in ``dualattn.commands.<name>`` and exposes
``register(app: typer.Typer) -> None``; this module only assembles them so that
``dualattn --help`` stays fast (heavy imports happen inside the commands).
"""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = ("train", "bench", "convex", "transfer", "data", "finetune")

app = typer.Typer(
    name="dualattn",
    help="Primal-dual attention layers and convex attention heads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """Primal-dual attention layers and convex attention heads."""


@app.command()
def version() -> None:
    """Print the installed dualattn version."""
    from dualattn import __version__

    typer.echo(__version__)


for _name in COMMAND_MODULES:
    importlib.import_module(f"dualattn.commands.{_name}").register(app)


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
