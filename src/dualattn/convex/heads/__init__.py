"""Registry of convex head types.

A head module registers its class with the :func:`register_head` decorator::

    @register_head("mixer-linear")
    class MixerLinearHead(ConvexHead): ...

Modules listed in ``_HEAD_MODULES`` are imported on package import (a listed
module whose file does not exist yet is skipped; any other import error is
raised).  Adding a head type = one entry there.
"""

from __future__ import annotations

import importlib

from dualattn.convex.heads.base import ConvexHead, NonconvexHead

HEADS: dict[str, type[ConvexHead]] = {}

_HEAD_MODULES = ("linear", "gated", "mlp", "mixer", "fno")


def register_head(name: str):
    """Class decorator: register a :class:`ConvexHead` subclass under ``name``."""

    def deco(cls: type[ConvexHead]) -> type[ConvexHead]:
        if not (isinstance(cls, type) and issubclass(cls, ConvexHead)):
            raise TypeError(f"register_head({name!r}) expects a ConvexHead subclass, got {cls!r}")
        if name in HEADS and HEADS[name] is not cls:
            raise ValueError(f"head name {name!r} already registered by {HEADS[name].__name__}")
        HEADS[name] = cls
        if "name" not in vars(cls):  # a subclass of a registered head gets its own name, not its parent's
            cls.name = name
        return cls

    return deco


def get_head(head: str | ConvexHead, **options) -> ConvexHead:
    """Instantiate a registered head by name (``options`` go to its constructor),
    or return ``head`` unchanged if it already is a :class:`ConvexHead`."""
    if isinstance(head, ConvexHead):
        if options:
            raise ValueError("head options can only be given together with a head name")
        return head
    if not isinstance(head, str):
        raise TypeError(f"head must be a name or a ConvexHead, got {type(head).__name__}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; available: {sorted(HEADS)}")
    return HEADS[head](**options)


for _mod in _HEAD_MODULES:
    _full = f"{__name__}.{_mod}"
    try:
        importlib.import_module(_full)
    except ModuleNotFoundError as err:  # only skip modules that do not exist yet
        if err.name != _full:
            raise

__all__ = ["HEADS", "ConvexHead", "NonconvexHead", "register_head", "get_head"]
