"""Loaders for the official Long Range Arena files (for users who downloaded ``lra_release``).

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

import csv
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import listops as lo
from .base import (
    SequenceData,
    check_fraction,
    load_npz,
    params_hash,
    reject_options,
    resolve_cache_dir,
    save_npz_atomic,
)

LISTOPS_FILES = {"train": "basic_train.tsv", "val": "basic_val.tsv", "test": "basic_test.tsv"}
PATHFINDER_DIFFICULTY = {
    "easy": "curv_baseline",
    "intermediate": "curv_contour_length_9",
    "hard": "curv_contour_length_14",
}
_CACHE_VERSION = 1


def _stat_key(paths: list[Path], **extra: Any) -> str:
    return params_hash(
        {"v": _CACHE_VERSION, **extra,
         "files": [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]}
    )


# --------------------------------------------------------------------------- #
# ListOps
# --------------------------------------------------------------------------- #
def find_listops_dir(root: str | os.PathLike) -> Path:
    """Folder holding the three ``basic_*.tsv`` files; FileNotFoundError naming the missing ones."""
    root = Path(root).expanduser()
    candidates = [root, root / "listops-1000", root / "lra_release" / "listops-1000"]
    for base in candidates:
        if all((base / f).is_file() for f in LISTOPS_FILES.values()):
            return base
    best = next((b for b in candidates if any((b / f).is_file() for f in LISTOPS_FILES.values())), root)
    missing = [str(best / f) for f in LISTOPS_FILES.values() if not (best / f).is_file()]
    raise FileNotFoundError(
        f"LRA ListOps files not found: missing {', '.join(missing)} "
        f"(looked in {', '.join(str(c) for c in candidates)})"
    )


def read_listops_tsv(path: Path, keep_parens: bool, cache_dir: Any = None, cache: bool = True) -> dict[str, np.ndarray]:
    """Parse one TSV into ``ids`` (flat int16), ``lengths`` and ``labels``; cached."""
    cfile = None
    if cache:
        cfile = resolve_cache_dir(cache_dir) / "lra" / f"{path.stem}-{_stat_key([path], parens=keep_parens)}.npz"
        hit = load_npz(cfile)
        if hit is not None:
            return hit
    ids: list[int] = []
    lengths, labels = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["Source", "Target"]:
            raise ValueError(f"{path}: expected a header 'Source<TAB>Target', got {header!r}")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{line_no}: expected 2 tab-separated columns, got {len(row)}")
            try:
                toks = lo.encode(row[0], keep_parens=keep_parens)
                label = int(row[1])
            except ValueError as exc:
                raise ValueError(f"{path}:{line_no}: {exc}") from exc
            if not 0 <= label <= 9:
                raise ValueError(f"{path}:{line_no}: Target must be 0..9, got {label}")
            if not toks:
                raise ValueError(f"{path}:{line_no}: empty Source")
            ids.extend(toks)
            lengths.append(len(toks))
            labels.append(label)
    if not labels:
        raise ValueError(f"{path}: no examples")
    out = {
        "ids": np.asarray(ids, dtype=np.int16),
        "lengths": np.asarray(lengths, dtype=np.int64),
        "labels": np.asarray(labels, dtype=np.int64),
    }
    if cfile is not None:
        save_npz_atomic(cfile, **out)
    return out


def load_lra_listops(
    split: str,
    *,
    root: str | os.PathLike,
    cache_dir: Any = None,
    keep_parens: bool = False,
    max_len: int | None = None,
    truncate: bool = False,
    cache: bool = True,
    **options: Any,
) -> SequenceData:
    """Official LRA ListOps split as token ids padded to a common length (see module doc)."""
    reject_options("listops (LRA files)", options)
    if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"max_len: expected a positive int or None, got {max_len!r}")
    base = find_listops_dir(root)
    parsed = {s: read_listops_tsv(base / f, keep_parens, cache_dir, cache) for s, f in LISTOPS_FILES.items()}
    longest = max(int(p["lengths"].max()) for p in parsed.values())
    t = longest if max_len is None else max_len
    if longest > t and not truncate:
        raise ValueError(
            f"max_len={max_len} is shorter than the longest LRA ListOps sequence ({longest} tokens); "
            "pass truncate=True to crop explicitly or raise max_len"
        )
    p = parsed[split]
    n = len(p["labels"])
    tokens = np.zeros((n, t), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(p["lengths"])])
    lengths = np.minimum(p["lengths"], t)
    for i in range(n):
        tokens[i, : lengths[i]] = p["ids"][offsets[i] : offsets[i] + lengths[i]]
    mask = np.arange(t)[None, :] < lengths[:, None]
    return SequenceData(
        tokens, mask, p["labels"], lo.CLASSES, vocab_size=lo.VOCAB_SIZE, name="listops", split=split,
        meta={"source": str(base / LISTOPS_FILES[split]), "vocab": lo.VOCAB, "longest": longest},
    )


# --------------------------------------------------------------------------- #
# Pathfinder
# --------------------------------------------------------------------------- #
def find_pathfinder_dir(root: str | os.PathLike, difficulty: str, resolution: int) -> Path:
    """Folder with ``metadata/``; FileNotFoundError listing the folders tried."""
    sub = PATHFINDER_DIFFICULTY.get(difficulty, difficulty)
    if sub not in PATHFINDER_DIFFICULTY.values():
        raise ValueError(
            f"difficulty: expected one of {sorted(PATHFINDER_DIFFICULTY) + sorted(PATHFINDER_DIFFICULTY.values())}, "
            f"got {difficulty!r}"
        )
    root = Path(root).expanduser()
    res = f"pathfinder{resolution}"
    candidates = [root / res / sub, root / "lra_release" / res / sub, root / sub, root]
    for base in candidates:
        if (base / "metadata").is_dir():
            return base
    raise FileNotFoundError(
        f"LRA Pathfinder metadata folder not found; expected one of: "
        f"{', '.join(str(c / 'metadata') for c in candidates)}"
    )


def _numeric_key(p: Path) -> tuple[int, str]:
    m = re.match(r"\d+", p.stem)
    return (int(m.group()) if m else 1 << 62, p.name)


def read_pathfinder_dir(base: Path, resolution: int, cache_dir: Any = None, cache: bool = True,
                        progress: bool = True) -> dict[str, np.ndarray]:
    """All images (uint8 ``(n, res, res)``) and labels listed by ``base/metadata/*.npy``, in order."""
    metas = sorted((base / "metadata").glob("*.npy"), key=_numeric_key)
    if not metas:
        raise FileNotFoundError(f"no metadata files {base / 'metadata' / '*.npy'}")
    cfile = None
    if cache:
        cfile = resolve_cache_dir(cache_dir) / "lra" / f"pathfinder-{_stat_key(metas, res=resolution)}.npz"
        hit = load_npz(cfile)
        if hit is not None:
            return hit
    from PIL import Image

    entries: list[tuple[Path, int]] = []
    for meta in metas:
        for line_no, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 4:
                raise ValueError(f"{meta}:{line_no}: expected >= 4 space-separated fields, got {line!r}")
            try:
                label = int(fields[3])
            except ValueError as exc:
                raise ValueError(f"{meta}:{line_no}: label field {fields[3]!r} is not an integer") from exc
            if label not in (0, 1):
                raise ValueError(f"{meta}:{line_no}: label must be 0 or 1, got {label}")
            entries.append((base / fields[0] / fields[1], label))
    if not entries:
        raise ValueError(f"{base / 'metadata'}: no examples listed")
    images = np.empty((len(entries), resolution, resolution), dtype=np.uint8)
    for i, (path, _) in enumerate(tqdm(entries, desc="Pathfinder PNGs", disable=not progress, unit="img")):
        if not path.is_file():
            raise FileNotFoundError(f"Pathfinder image listed in metadata not found: {path}")
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
        if arr.shape != (resolution, resolution):
            raise ValueError(f"{path}: expected a {resolution}x{resolution} image, got {arr.shape}")
        images[i] = arr
    out = {"images": images, "labels": np.asarray([lab for _, lab in entries], dtype=np.int64)}
    if cfile is not None:
        save_npz_atomic(cfile, **out)
    return out


def load_lra_pathfinder(
    split: str,
    *,
    root: str | os.PathLike,
    cache_dir: Any = None,
    seed: int = 0,
    difficulty: str = "curv_baseline",
    resolution: int = 32,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    as_tokens: bool = False,
    normalize: bool = True,
    cache: bool = True,
    progress: bool = True,
    **options: Any,
) -> SequenceData:
    """Official LRA Pathfinder split as pixel sequences (see module doc; ``seed`` is unused)."""
    from .pathfinder import CLASSES, images_to_sequences

    reject_options("pathfinder (LRA files)", options)
    val_fraction = check_fraction(val_fraction, "val_fraction")
    test_fraction = check_fraction(test_fraction, "test_fraction")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    base = find_pathfinder_dir(root, difficulty, resolution)
    data = read_pathfinder_dir(base, resolution, cache_dir, cache, progress)
    n = len(data["labels"])
    n_tr = int(round(n * (1 - val_fraction - test_fraction)))
    n_va = int(round(n * val_fraction))
    bounds = {"train": (0, n_tr), "val": (n_tr, n_tr + n_va), "test": (n_tr + n_va, n)}
    lo_, hi_ = bounds[split]
    if hi_ <= lo_:
        raise ValueError(f"split={split!r}: no images left for it ({n} images, fractions {val_fraction}/{test_fraction})")
    if n_tr == 0:
        raise ValueError(f"Pathfinder: no training images ({n} images listed)")
    return images_to_sequences(
        data["images"][lo_:hi_], data["labels"][lo_:hi_], data["images"][:n_tr],
        name="pathfinder", split=split, classes=CLASSES, as_tokens=as_tokens, normalize=normalize,
        meta={"source": str(base), "difficulty": difficulty, "image_shape": (resolution, resolution)},
    )
