"""UEA multivariate time-series classification (``.ts`` files, read through aeon).

* ``JapaneseVowels`` and ``BasicMotions`` are read from the copies shipped
  inside the aeon wheel (never a download).
* Any other UEA dataset is read from ``root`` (argument, or env
  ``DUALATTN_UEA_ROOT``) laid out as ``root/NAME/NAME_TRAIN.ts`` or
  ``root/NAME_TRAIN.ts`` (and ``..._TEST.ts``).

Splits: UEA has train/test files only. ``"val"`` is a stratified seeded
hold-out of ``val_fraction`` (default 0.2) of the TRAIN file; ``"train"`` is
the TRAIN file minus that hold-out; ``"test"`` is the TEST file.

Variable lengths are zero-padded to the longest series of TRAIN and TEST
together, with ``mask`` marking real steps; nothing is truncated unless
``max_len`` is given together with ``truncate=True``. Trailing all-NaN steps
count as padding; interior missing values (``?``/NaN) are interpolated
(``missing="interpolate"``), set to the train mean (``"mean"``) or rejected
(``"error"``). Normalisation (default on): per-channel z-score with the
statistics of the ``"train"`` split over valid steps only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .base import (
    DEFAULT_VAL_FRACTION,
    SequenceData,
    apply_stats,
    channel_stats,
    check_fraction,
    load_npz,
    params_hash,
    register_dataset,
    register_fallback,
    reject_options,
    resolve_cache_dir,
    save_npz_atomic,
    stats_to_torch,
    stratified_split,
)

UEA_ROOT_ENV = "DUALATTN_UEA_ROOT"
SHIPPED = ("JapaneseVowels", "BasicMotions")
#: The ten UEA datasets of Nguyen et al. (2023), Table 1.
PAPER_UEA = (
    "EthanolConcentration",
    "FaceDetection",
    "Handwriting",
    "Heartbeat",
    "JapaneseVowels",
    "PEMS-SF",
    "SelfRegulationSCP1",
    "SelfRegulationSCP2",
    "SpokenArabicDigits",
    "UWaveGestureLibrary",
)
MISSING_MODES = ("interpolate", "mean", "error")
_CACHE_VERSION = 2  # 2: labels checked against @classLabel before caching


# --------------------------------------------------------------------------- #
# Locating and parsing files
# --------------------------------------------------------------------------- #
def aeon_data_dir() -> Path:
    """Folder of the datasets shipped inside the aeon wheel."""
    import aeon

    return Path(os.path.dirname(aeon.__file__)) / "datasets" / "data"


def find_ts_files(name: str, root: str | os.PathLike | None) -> tuple[Path, Path]:
    """Paths of ``NAME_TRAIN.ts`` and ``NAME_TEST.ts``; FileNotFoundError naming what was tried."""
    if root is None:
        root = os.environ.get(UEA_ROOT_ENV) or None
    if root is None:
        if name in SHIPPED:
            base = aeon_data_dir() / name
            return base / f"{name}_TRAIN.ts", base / f"{name}_TEST.ts"
        raise FileNotFoundError(
            f"UEA dataset {name!r} is not shipped with aeon; pass root=<folder> (or set "
            f"${UEA_ROOT_ENV}) where the folder holds {name}/{name}_TRAIN.ts and "
            f"{name}/{name}_TEST.ts (or {name}_TRAIN.ts / {name}_TEST.ts directly). "
            "Download from https://www.timeseriesclassification.com/"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"root: UEA folder {str(root)!r} does not exist")
    tried = []
    for base in (root / name, root):
        train, test = base / f"{name}_TRAIN.ts", base / f"{name}_TEST.ts"
        if train.is_file() and test.is_file():
            return train, test
        tried += [train, test]
    missing = [str(p) for p in tried if not p.is_file()]
    raise FileNotFoundError(
        f"UEA dataset {name!r}: expected files not found: {', '.join(missing)}"
    )


def read_ts(path: str | os.PathLike) -> tuple[list[np.ndarray], np.ndarray]:
    """Parse a ``.ts`` file: list of ``(T_i, C)`` float arrays (NaN = missing) and str labels."""
    from aeon.datasets import load_from_ts_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"UEA file not found: {path}")
    try:
        X, y = load_from_ts_file(str(path))
    except Exception as exc:  # aeon raises IOError/ValueError/... with terse messages
        raise ValueError(f"could not parse UEA file {path}: {exc}") from exc
    if y is None or len(y) != len(X):
        raise ValueError(f"UEA file {path}: expected one class label per case (@classLabel true)")
    labels = np.asarray([str(v) for v in y])
    declared = declared_class_labels(path)
    if declared is not None:
        # compared case-insensitively: the shipped BasicMotions declares "Standing", its cases say "standing"
        known = {d.lower() for d in declared}
        undeclared = sorted({v for v in labels.tolist() if v.lower() not in known})
        if undeclared:
            first = int(np.flatnonzero(np.isin(labels, undeclared))[0])
            raise ValueError(
                f"UEA file {path}: class label(s) {undeclared} (first in case {first}) are not declared in "
                f"its @classLabel line {declared}; fix the labels or the header"
            )
    series = [np.asarray(case, dtype=np.float64).T for case in X]  # (C, T) -> (T, C)
    if not series:
        raise ValueError(f"UEA file {path}: no cases")
    chans = {s.shape[1] for s in series}
    if len(chans) != 1:
        raise ValueError(f"UEA file {path}: cases have different channel counts {sorted(chans)}")
    return series, labels


def declared_class_labels(path: str | os.PathLike) -> list[str] | None:
    """The labels listed on a ``.ts`` file's ``@classLabel true a b c`` header line (None if absent/false).

    aeon's reader does not compare the cases' labels with this list, so
    :func:`read_ts` does.
    """
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            tokens = line.strip().split()
            if not tokens or tokens[0].startswith("#"):
                continue
            key = tokens[0].lower()
            if key == "@data":
                return None
            if key == "@classlabel":
                if len(tokens) < 2 or tokens[1].lower() != "true":
                    return None
                return tokens[2:]
    return None


def _true_length(s: np.ndarray) -> int:
    """Length once trailing all-NaN steps (padding some UEA files use) are dropped."""
    present = ~np.isnan(s).all(axis=1)
    return int(np.flatnonzero(present)[-1] + 1) if present.any() else 0


def read_ts_padded(path: Path, cache_dir: str | os.PathLike | None, cache: bool = True) -> dict[str, np.ndarray]:
    """Parsed file as ``values (n, T, C)`` NaN-padded, ``lengths (n,)``, ``labels (n,)``; cached."""
    st = path.stat()
    key = params_hash({"v": _CACHE_VERSION, "path": str(path.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns})
    cfile = resolve_cache_dir(cache_dir) / "uea" / f"{path.stem}-{key}.npz" if cache else None
    if cfile is not None:
        hit = load_npz(cfile)
        if hit is not None:
            return hit
    series, labels = read_ts(path)
    lengths = np.array([_true_length(s) for s in series], dtype=np.int64)
    if (lengths == 0).any():
        bad = int(np.flatnonzero(lengths == 0)[0])
        raise ValueError(f"UEA file {path}: case {bad} has no observed values")
    n, c, t = len(series), series[0].shape[1], int(lengths.max())
    values = np.full((n, t, c), np.nan, dtype=np.float32)
    for i, (s, ln) in enumerate(zip(series, lengths)):
        values[i, :ln] = s[:ln]
    out = {"values": values, "lengths": lengths, "labels": labels}
    if cfile is not None:
        save_npz_atomic(cfile, **out)
    return out


# --------------------------------------------------------------------------- #
# Cleaning
# --------------------------------------------------------------------------- #
def sort_labels(labels: np.ndarray) -> list[str]:
    """Distinct labels, sorted numerically when all are numbers, else lexicographically."""
    uniq = sorted({str(v) for v in labels})
    try:
        return sorted(uniq, key=float)
    except ValueError:
        return uniq


def fill_missing(values: np.ndarray, lengths: np.ndarray, mode: str, what: str) -> np.ndarray:
    """Handle NaN inside the valid part of each series (padding is left alone).

    ``interpolate``: per channel, linear interpolation between observed steps,
    edge values held constant; channels with no observation stay NaN (later
    set to the train mean). ``mean``: leave NaN (set to the train mean later).
    ``error``: raise.
    """
    t_idx = np.arange(values.shape[1])
    valid = t_idx[None, :] < lengths[:, None]
    nan_valid = np.isnan(values) & valid[:, :, None]
    if not nan_valid.any() or mode == "mean":
        return values
    if mode == "error":
        i, t, c = (int(v) for v in np.argwhere(nan_valid)[0])
        raise ValueError(
            f"{what}: missing value at case {i}, step {t}, channel {c}; "
            f"use missing='interpolate' or 'mean' (got missing='error')"
        )
    out = values.copy()
    for i, c in {(int(i), int(c)) for i, _, c in np.argwhere(nan_valid)}:
        ln = int(lengths[i])
        col = out[i, :ln, c]
        obs = ~np.isnan(col)
        if obs.any():
            out[i, :ln, c] = np.interp(np.arange(ln), np.flatnonzero(obs), col[obs])
    return out


# --------------------------------------------------------------------------- #
# Loader
# --------------------------------------------------------------------------- #
def load_uea(
    name: str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    normalize: bool = True,
    missing: str = "interpolate",
    max_len: int | None = None,
    truncate: bool = False,
    cache: bool = True,
    **options: Any,
) -> SequenceData:
    """Load one split of UEA dataset ``name`` as float ``(n, T, C)`` + mask (see module doc)."""
    reject_options(name, options)
    val_fraction = check_fraction(val_fraction, "val_fraction")
    if missing not in MISSING_MODES:
        raise ValueError(f"missing: expected one of {MISSING_MODES}, got {missing!r}")
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"max_len: expected a positive int or None, got {max_len!r}")
    if split == "val" and val_fraction == 0:
        raise ValueError("split='val' needs val_fraction > 0 (UEA has no validation file)")
    train_path, test_path = find_ts_files(name, root)
    for p in (train_path, test_path):
        if not p.is_file():
            raise FileNotFoundError(f"UEA dataset {name!r}: expected file not found: {p}")
    tr = read_ts_padded(train_path, cache_dir, cache)
    te = read_ts_padded(test_path, cache_dir, cache)
    if tr["values"].shape[2] != te["values"].shape[2]:
        raise ValueError(
            f"UEA dataset {name!r}: TRAIN has {tr['values'].shape[2]} channels but "
            f"TEST has {te['values'].shape[2]}"
        )

    classes = sort_labels(tr["labels"])
    unseen = sorted(set(te["labels"].tolist()) - set(classes))
    if unseen:
        raise ValueError(f"UEA dataset {name!r}: TEST labels {unseen} do not occur in TRAIN (classes {classes})")
    label_id = {c: i for i, c in enumerate(classes)}

    longest = int(max(tr["lengths"].max(), te["lengths"].max()))
    t = longest if max_len is None else max_len
    if longest > t and not truncate:
        raise ValueError(
            f"max_len={max_len} is shorter than the longest series of {name!r} ({longest} steps); "
            "pass truncate=True to crop explicitly or raise max_len"
        )

    def prepare(raw: dict[str, np.ndarray], what: str) -> tuple[np.ndarray, np.ndarray]:
        lengths = np.minimum(raw["lengths"], t)
        vals = raw["values"][:, :t]
        if vals.shape[1] < t:
            pad = np.full((vals.shape[0], t - vals.shape[1], vals.shape[2]), np.nan, np.float32)
            vals = np.concatenate([vals, pad], axis=1)
        vals = fill_missing(vals, lengths, missing, what)
        mask = np.arange(t)[None, :] < lengths[:, None]
        return vals, mask

    x_tr, m_tr = prepare(tr, f"{train_path}")
    y_tr = np.array([label_id[v] for v in tr["labels"]], dtype=np.int64)
    keep, held = stratified_split(y_tr, val_fraction, seed) if val_fraction > 0 else (np.arange(len(y_tr)), np.zeros(0, np.int64))
    stats = channel_stats(x_tr[keep], m_tr[keep])

    if split == "test":
        x, m = prepare(te, f"{test_path}")
        y = np.array([label_id[v] for v in te["labels"]], dtype=np.int64)
    else:
        idx = keep if split == "train" else held
        if len(idx) == 0:
            raise ValueError(
                f"UEA dataset {name!r}: the validation hold-out is empty (val_fraction={val_fraction} "
                f"of {len(y_tr)} TRAIN cases rounds to 0 per class); raise val_fraction"
            )
        x, m, y = x_tr[idx], m_tr[idx], y_tr[idx]

    if normalize:
        x = apply_stats(x, m, stats)
        x[np.isnan(x)] = 0.0  # remaining missing values -> train mean
    else:
        x = np.where(np.isnan(x), stats["mean"][None, None, :], x).astype(np.float32)
        x[~m] = 0.0
    meta = {
        "source": str(train_path if split != "test" else test_path),
        "val_fraction": val_fraction,
        "normalize": normalize,
        "missing": missing,
        "longest": longest,
    }
    return SequenceData(
        x, m, y, classes, name=name, split=split,
        stats=stats_to_torch(stats) if normalize else None, meta=meta,
    )


@register_dataset(*SHIPPED)
def _load_shipped(name: str, split: str, **kw: Any) -> SequenceData:
    return load_uea(name, split, **kw)


@register_dataset(*[n for n in PAPER_UEA if n not in SHIPPED])
def _load_paper(name: str, split: str, **kw: Any) -> SequenceData:
    return load_uea(name, split, **kw)


@register_fallback
def _load_any_ts(name: str, split: str, *, root=None, **kw: Any) -> SequenceData | None:
    """Any other name is tried as a UEA dataset when a root folder is known."""
    if root is None and not os.environ.get(UEA_ROOT_ENV):
        return None
    return load_uea(name, split, root=root, **kw)
