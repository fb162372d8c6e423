"""Pixel-sequence image classification on scikit-learn's digits (1797 8x8 images, 10 classes).

Each image becomes a row-major sequence of 64 pixels: float intensities
``(n, 64, 1)`` (``x = v / 16``, z-scored with train statistics when
``normalize``) or, with ``as_tokens=True``, the raw intensity levels 0..16 as
token ids (``vocab_size=17``; the mask is all True since nothing is padded).

Splits (seeded, stratified): ``test_fraction`` (default 0.2) of all images is
held out with the fixed ``split_seed`` (default 0, so every training seed sees
the same test set); ``val_fraction`` (default 0.2) of the rest, drawn with
``seed``, is "val"; "train" is what remains.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from .base import (
    DEFAULT_VAL_FRACTION,
    SequenceData,
    apply_stats,
    channel_stats,
    check_fraction,
    register_dataset,
    reject_options,
    stats_to_torch,
    stratified_split,
)

DIGIT_LEVELS = 17  # load_digits intensities are integers 0..16


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``load_digits()`` read once per process: images (1797, 8, 8) int, targets, class names."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, target = bunch.images.astype(np.int64), bunch.target.astype(np.int64)
    images.setflags(write=False)
    target.setflags(write=False)
    return images, target, tuple(str(c) for c in bunch.target_names)


def digits_splits(seed: int, val_fraction: float, test_fraction: float, split_seed: int) -> dict[str, np.ndarray]:
    """Row indices of train/val/test into ``load_digits()`` (disjoint, stratified)."""
    y = _digits()[1]
    rest, test = stratified_split(y, test_fraction, seed=10_007 + int(split_seed))
    if val_fraction > 0:
        tr, va = stratified_split(y[rest], val_fraction, seed=int(seed))
        return {"train": rest[tr], "val": rest[va], "test": test}
    return {"train": rest, "val": np.zeros(0, np.int64), "test": test}


@register_dataset("digits-pixels")
def load_digits_pixels(
    name: str,
    split: str,
    *,
    root: Any = None,
    cache_dir: Any = None,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    as_tokens: bool = False,
    normalize: bool = True,
    **options: Any,
) -> SequenceData:
    """One split of digits as pixel sequences (see module doc). ``root``/``cache_dir`` are unused."""
    reject_options(name, options)
    if root is not None:
        raise ValueError("root: digits-pixels ships with scikit-learn and takes no root folder")
    val_fraction = check_fraction(val_fraction, "val_fraction")
    test_fraction = check_fraction(test_fraction, "test_fraction", allow_zero=False)
    if split == "val" and val_fraction == 0:
        raise ValueError("split='val' needs val_fraction > 0")
    images, target, names = _digits()  # (1797, 8, 8), values 0..16
    idx = digits_splits(seed, val_fraction, test_fraction, split_seed)
    seq = images.reshape(images.shape[0], -1)
    rows = idx[split]
    classes = list(names)
    mask = np.ones((len(rows), seq.shape[1]), dtype=bool)
    meta = {"image_shape": (8, 8), "val_fraction": val_fraction, "test_fraction": test_fraction, "split_seed": split_seed}
    if as_tokens:
        return SequenceData(seq[rows], mask, target[rows], classes, vocab_size=DIGIT_LEVELS,
                            name=name, split=split, meta=meta)
    x = (seq.astype(np.float32) / (DIGIT_LEVELS - 1))[:, :, None]
    stats = None
    if normalize:
        tr = x[idx["train"]]
        stats = channel_stats(tr, np.ones(tr.shape[:2], dtype=bool))
        out = apply_stats(x[rows], mask, stats)
    else:
        out = x[rows]
    return SequenceData(out, mask, target[rows], classes, name=name, split=split,
                        stats=stats_to_torch(stats), meta=meta)
