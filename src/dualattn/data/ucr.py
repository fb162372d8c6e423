"""UCR univariate sets shipped inside the aeon wheel (read offline, never downloaded).

``ArrowHead, GunPoint, ItalyPowerDemand, OSULeaf, ACSF1, PickupGestureWiimoteZ``
are read from aeon's bundled ``.ts`` files with the UEA loader
(:func:`dualattn.data.uea.load_uea`: seeded stratified 20 % validation
hold-out of TRAIN, z-score with train statistics, variable lengths masked).

Adaptation for the sequence models (documented in ``docs/experiments.md``):
a univariate series is a sequence of ``T`` tokens with one channel. Long series
are cut into non-overlapping patches of ``p`` steps, each patch one token with
``p`` channels (as in PatchTST)::

    x'[i, j, k] = x[i, j p + k]      (k < p; steps past the end are 0 and masked)
    mask'[i, j] = any_k mask[i, j p + k]

``patch_len=p`` sets ``p`` directly; ``max_tokens=m`` picks the smallest ``p``
with ``ceil(T / p) <= m`` (``T`` = longest series of TRAIN and TEST).
``p = 1`` leaves the data unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import SequenceData, register_dataset

#: UCR univariate classification sets bundled with aeon (verified to load offline).
AEON_UCR = ("ArrowHead", "GunPoint", "ItalyPowerDemand", "OSULeaf", "ACSF1", "PickupGestureWiimoteZ")


def patch_length(series_len: int, *, patch_len: int | None = None, max_tokens: int | None = None) -> int:
    """``patch_len`` if given, else the smallest ``p`` with ``ceil(series_len / p) <= max_tokens`` (1 if neither)."""
    for arg, v in (("patch_len", patch_len), ("max_tokens", max_tokens)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{arg}: expected a positive int or None, got {v!r}")
    if patch_len is not None and max_tokens is not None:
        raise ValueError("patch_len and max_tokens: give at most one of them")
    if patch_len is not None:
        return patch_len
    if max_tokens is None:
        return 1
    return max(1, math.ceil(series_len / max_tokens))


def patch_series(ds: SequenceData, p: int) -> SequenceData:
    """Group ``p`` consecutive steps into one token: ``(n, T, C) -> (n, ceil(T/p), C p)`` (see module doc)."""
    if p == 1:
        return ds
    n, t, c = ds.x.shape
    tp = math.ceil(t / p)
    x = torch.zeros(n, tp * p, c, dtype=ds.x.dtype)
    x[:, :t] = ds.x * ds.mask[..., None]
    m = torch.zeros(n, tp * p, dtype=torch.bool)
    m[:, :t] = ds.mask
    x = x.reshape(n, tp, p * c)
    m = m.reshape(n, tp, p).any(-1)
    meta = {**ds.meta, "patch_len": p, "tokens": tp}
    return SequenceData(x, m, ds.y, ds.classes, name=ds.name, split=ds.split, stats=ds.stats, meta=meta)


def load_patched(name: str, split: str, *, root=None, patch_len: int | None = None,
                 max_tokens: int | None = None, **kw: Any) -> SequenceData:
    """UEA/UCR split, patched per :func:`patch_length` (``root=None`` reads aeon's bundled copy)."""
    from .uea import aeon_data_dir, load_uea

    if root is None and name in AEON_UCR:
        root = aeon_data_dir()
    ds = load_uea(name, split, root=root, **kw)
    longest = int(ds.meta.get("longest", ds.x.shape[1]))
    p = patch_length(longest, patch_len=patch_len, max_tokens=max_tokens)
    return patch_series(ds, p)


@register_dataset(*AEON_UCR)
def _load_aeon_ucr(name: str, split: str, **kw: Any) -> SequenceData:
    return load_patched(name, split, **kw)


def available_offline() -> dict[str, bool]:
    """Which of :data:`AEON_UCR` have both ``.ts`` files in the installed aeon wheel."""
    from .uea import aeon_data_dir

    base = aeon_data_dir()
    return {n: (base / n / f"{n}_TRAIN.ts").is_file() and (base / n / f"{n}_TEST.ts").is_file() for n in AEON_UCR}


__all__ = ["AEON_UCR", "available_offline", "load_patched", "patch_length", "patch_series"]
