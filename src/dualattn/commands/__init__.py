"""Sub-command groups of the ``dualattn`` CLI; each module defines ``register(app)``.

Command modules import only ``typer`` and the standard library at import time:
``import dualattn.cli`` (and so ``dualattn --help``) must not import torch,
numpy or lightning. Groups whose commands live in heavy packages
(``dualattn bench``, ``dualattn data``) are mounted with :func:`lazy_group`,
which imports them only when one of their commands (or their help) is asked for.
"""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup


class _LazyGroup(TyperGroup):
    """A typer group whose commands come from ``target`` (``"module:attr"``: a ``typer.Typer``
    or a function returning one) the first time they are listed or resolved."""

    target = ""

    @property
    def commands(self):  # type: ignore[override]
        if self._loaded is None:
            module, attr = self.target.split(":")
            sub = getattr(importlib.import_module(module), attr)
            if not isinstance(sub, typer.Typer):
                sub = sub()
            group = typer.main.get_command(sub)  # a lone command comes back as itself, not a group
            self._loaded = dict(group.commands) if hasattr(group, "commands") else {group.name: group}
            self._loaded.update(self._extra)
        return self._loaded

    @commands.setter
    def commands(self, value) -> None:
        self._loaded = None
        self._extra = dict(value or {})


def lazy_group(target: str, help: str) -> typer.Typer:
    """A ``typer.Typer`` to ``add_typer`` whose commands are those of the ``typer.Typer`` at
    ``target`` (``"package.module:app"``, or a function returning one), imported on first use."""
    cls = type("LazyGroup", (_LazyGroup,), {"target": target})
    return typer.Typer(cls=cls, help=help, no_args_is_help=True)
