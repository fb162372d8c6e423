"""dualattn.data: datasets and generators returning :class:`SequenceData`.

``load_dataset(name, split, *, root=None, cache_dir=None, seed=0, **options)``
with ``split`` in ``"train", "val", "test"``; see ``docs/data.md``.
"""

from . import images as _images  # noqa: F401  (registers "digits-pixels")
from . import listops as _listops  # noqa: F401  (registers "listops", "listops-small")
from . import pathfinder as _pathfinder  # noqa: F401  (registers "pathfinder", "pathfinder-small")
from . import uea as _uea  # noqa: F401  (registers UEA names)
from . import ucr as _ucr  # noqa: F401  (registers the UCR sets shipped with aeon)
from .base import (
    SPLITS,
    CacheDirError,
    SequenceData,
    available_datasets,
    load_dataset,
    register_dataset,
    resolve_cache_dir,
)
from .loaders import make_dataloaders, trim_collate

__all__ = [
    "SPLITS",
    "CacheDirError",
    "SequenceData",
    "available_datasets",
    "load_dataset",
    "make_dataloaders",
    "register_dataset",
    "resolve_cache_dir",
    "trim_collate",
]
