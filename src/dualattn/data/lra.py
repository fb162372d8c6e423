"""Loaders for the official Long Range Arena files (for users who downloaded ``lra_release``).

Each reader lives next to its generator (:mod:`dualattn.data.listops`,
:mod:`dualattn.data.pathfinder`); this module only gathers them under one name.
It imports those modules and is imported by none of them, so the data package
has no import cycle (``tests/data/test_import_graph.py``).

ListOps (``load_dataset("listops", split, root=...)``):
    ``basic_train.tsv``, ``basic_val.tsv``, ``basic_test.tsv`` in ``root``,
    ``root/listops-1000`` or ``root/lra_release/listops-1000``; tab-separated with
    a ``Source`` (expression, parenthesised) and ``Target`` (0..9) header.
    Tokenised with :func:`dualattn.data.listops.encode` (same vocabulary as
    the generator; parentheses dropped unless ``keep_parens=True``) and padded
    to the longest sequence of the three files (or ``max_len``).

Pathfinder (``load_dataset("pathfinder", split, root=...)``):
    ``<base>/metadata/*.npy`` are text files, one image per line,
    ``"<img dir> <file name> <.> <label> ..."``; images are grayscale PNGs at
    ``<base>/<img dir>/<file name>``. ``<base>`` is ``root``, ``root/<difficulty>``,
    ``root/pathfinder<res>/<difficulty>`` or
    ``root/lra_release/pathfinder<res>/<difficulty>`` with difficulty
    ``curv_baseline`` (easy), ``curv_contour_length_9`` (intermediate) or
    ``curv_contour_length_14`` (hard). As in LRA, metadata files are read in
    numeric order and split contiguously: the first ``1 - val_fraction -
    test_fraction`` (0.8) is train, then val (0.1), then test (0.1).

Parsed files are cached as ``.npz`` keyed by their paths, sizes and mtimes.
"""

from __future__ import annotations

from .listops import LISTOPS_FILES, find_listops_dir, load_lra_listops, read_listops_tsv
from .pathfinder import PATHFINDER_DIFFICULTY, find_pathfinder_dir, load_lra_pathfinder, read_pathfinder_dir

__all__ = [
    "LISTOPS_FILES", "PATHFINDER_DIFFICULTY", "find_listops_dir", "find_pathfinder_dir", "load_lra_listops",
    "load_lra_pathfinder", "read_listops_tsv", "read_pathfinder_dir",
]
