"""Core data containers and helpers shared by every dataset in ``dualattn.data``.

* :class:`SequenceData` - the one dataset type every loader returns
  (contract in ``docs/architecture.md``).
* Registry: :func:`register_dataset` / :func:`load_dataset`.
* Disk cache: :func:`resolve_cache_dir`, :func:`params_hash`, :func:`file_stat_key`,
  :func:`save_npz_atomic`, and the resumable chunk cache of the generators
  (:func:`cached_chunks`, :func:`build_from_chunks`).
* Splits and normalisation: :func:`stratified_split`, :func:`channel_stats`,
  :func:`apply_stats`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

SPLITS = ("train", "val", "test")
CACHE_ENV = "DUALATTN_CACHE"
DEFAULT_VAL_FRACTION = 0.2


# --------------------------------------------------------------------------- #
# SequenceData
# --------------------------------------------------------------------------- #
class SequenceData(Dataset):
    """A padded batch of sequences with labels.

    Attributes
    ----------
    x : float32 ``(n, T, C)`` (continuous, channels last, zero-padded) or
        int64 ``(n, T)`` token ids (padded with 0 = PAD).
    mask : bool ``(n, T)``, True = real step (the ``key_padding_mask`` convention).
    y : int64 ``(n,)`` with values in ``[0, len(classes))``.
    classes : list of label strings; ``y == i`` means ``classes[i]``.
    vocab_size : int for token data (ids in ``[0, vocab_size)``), None for continuous.
    name, split : identification strings.
    stats : ``{"mean": (C,), "std": (C,)}`` float32 tensors used to normalise
        (train statistics, shared by val/test) or None.
    meta : free-form dict (generator parameters, source files, ...).
    """

    def __init__(
        self,
        x: torch.Tensor | np.ndarray,
        mask: torch.Tensor | np.ndarray,
        y: torch.Tensor | np.ndarray,
        classes: Sequence[str],
        *,
        vocab_size: int | None = None,
        name: str = "",
        split: str = "",
        stats: dict[str, torch.Tensor] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        x = torch.as_tensor(x)
        mask = torch.as_tensor(mask)
        y = torch.as_tensor(y)
        classes = [str(c) for c in classes]
        if vocab_size is None:
            if x.dim() != 3:
                raise ValueError(f"x: continuous data must be (n, T, C), got shape {tuple(x.shape)}")
            if not x.is_floating_point():
                raise TypeError(
                    f"x: continuous data must be floating point, got {x.dtype}; "
                    "pass vocab_size= for token ids"
                )
            x = x.to(torch.float32)
            if not torch.isfinite(x).all():
                raise ValueError("x: contains NaN or inf values")
        else:
            if not isinstance(vocab_size, int) or vocab_size < 1:
                raise ValueError(f"vocab_size: expected a positive int, got {vocab_size!r}")
            if x.dim() != 2:
                raise ValueError(f"x: token data must be (n, T), got shape {tuple(x.shape)}")
            if x.is_floating_point() or x.dtype == torch.bool:
                raise TypeError(f"x: token ids must be an integer tensor, got {x.dtype}")
            x = x.to(torch.long)
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
                raise ValueError(
                    f"x: token ids must lie in [0, {vocab_size}), got range "
                    f"[{int(x.min())}, {int(x.max())}]"
                )
        n, t = x.shape[:2]
        if mask.dtype != torch.bool:
            raise TypeError(f"mask: expected a bool tensor, got {mask.dtype}")
        if tuple(mask.shape) != (n, t):
            raise ValueError(f"mask: expected shape {(n, t)}, got {tuple(mask.shape)}")
        if y.dim() != 1 or y.shape[0] != n:
            raise ValueError(f"y: expected shape ({n},), got {tuple(y.shape)}")
        if y.is_floating_point() or y.dtype == torch.bool:
            raise TypeError(f"y: expected integer labels, got {y.dtype}")
        y = y.to(torch.long)
        if not classes:
            raise ValueError("classes: expected at least one class name")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise ValueError(
                f"y: labels must lie in [0, {len(classes)}) (len(classes)), got range "
                f"[{int(y.min())}, {int(y.max())}]"
            )
        self.x, self.mask, self.y = x, mask, y
        self.classes = classes
        self.vocab_size = vocab_size
        self.name, self.split = name, split
        self.stats = stats
        self.meta = dict(meta or {})

    # -- Dataset protocol ------------------------------------------------- #
    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x[i], self.mask[i], self.y[i]

    # -- conveniences ----------------------------------------------------- #
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def seq_len(self) -> int:
        """Padded length T (the same for train/val/test of one dataset)."""
        return int(self.x.shape[1])

    @property
    def num_channels(self) -> int | None:
        """C for continuous data, None for token data."""
        return int(self.x.shape[2]) if self.x.dim() == 3 else None

    @property
    def is_tokens(self) -> bool:
        return self.vocab_size is not None

    @property
    def lengths(self) -> torch.Tensor:
        """Number of real steps per sequence, ``mask.sum(1)``."""
        return self.mask.sum(dim=1)

    def subset(self, index: Sequence[int] | np.ndarray | torch.Tensor, split: str | None = None) -> "SequenceData":
        """A new SequenceData holding rows ``index`` (same classes, stats, vocab)."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return SequenceData(
            self.x[idx], self.mask[idx], self.y[idx], self.classes,
            vocab_size=self.vocab_size, name=self.name,
            split=self.split if split is None else split, stats=self.stats, meta=self.meta,
        )

    def class_counts(self) -> torch.Tensor:
        return torch.bincount(self.y, minlength=self.num_classes)

    def __repr__(self) -> str:
        kind = f"vocab_size={self.vocab_size}" if self.is_tokens else f"C={self.num_channels}"
        return (
            f"SequenceData(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"T={self.seq_len}, {kind}, classes={self.num_classes})"
        )


# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #
Loader = Callable[..., SequenceData]
_REGISTRY: dict[str, Loader] = {}
_CANONICAL: dict[str, str] = {}
_FALLBACK: list[Loader] = []


def register_dataset(*names: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(name, split, *, root, cache_dir, seed, **options)``.

    Names are matched case-insensitively; the loader receives the registered spelling.
    """

    def deco(fn: Loader) -> Loader:
        for nm in names:
            _REGISTRY[nm.lower()] = fn
            _CANONICAL[nm.lower()] = nm
        return fn

    return deco


def register_fallback(fn: Loader) -> Loader:
    """Register a loader tried for unregistered names (e.g. UEA folders with ``root=``)."""
    _FALLBACK.append(fn)
    return fn


def available_datasets() -> list[str]:
    """Canonical names of the registered datasets."""
    return sorted(set(_CANONICAL.values()))


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    return split


def load_dataset(
    name: str,
    split: str,
    *,
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    **options: Any,
) -> SequenceData:
    """Load split ``split`` ("train", "val", "test") of dataset ``name``.

    Registered names: see :func:`available_datasets`; any other UEA name works
    with ``root=`` a folder of ``.ts`` files. ``seed`` fixes generated data and
    the seeded splits; ``options`` are passed to the dataset's loader and
    unknown options raise ``TypeError``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty dataset name string, got {name!r}")
    check_split(split)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    fn = _REGISTRY.get(name.lower())
    if fn is not None:
        return fn(_CANONICAL[name.lower()], split, root=root, cache_dir=cache_dir, seed=int(seed), **options)
    for fb in _FALLBACK:
        out = fb(name, split, root=root, cache_dir=cache_dir, seed=int(seed), **options)
        if out is not None:
            return out
    raise ValueError(
        f"name: unknown dataset {name!r}. Registered: {', '.join(available_datasets())}; "
        "any UEA dataset can be loaded with root=<folder holding NAME_TRAIN.ts/NAME_TEST.ts>"
    )


# --------------------------------------------------------------------------- #
# Caching
# --------------------------------------------------------------------------- #
class CacheDirError(OSError, ValueError):
    """The dataset cache folder cannot be created or written; the message names it and its source.

    Also a ``ValueError``, so callers that turn bad data settings into one-line
    errors (``dualattn train``, ``reproduce``'s preflight) report it as one.
    """


_WRITABLE_CACHE_DIRS: set[Path] = set()


def make_writable_dir(path: Path) -> None:
    """Create ``path`` (with parents) and write and remove a probe file in it; ``OSError`` if it cannot."""
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe")
    os.close(fd)
    os.remove(probe)


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$DUALATTN_CACHE``, else ``~/.cache/dualattn``.

    The folder is created and checked to be writable (once per process);
    otherwise :class:`CacheDirError` names it and where it came from.
    """
    if cache_dir is not None:
        source = "cache_dir"
    elif os.environ.get(CACHE_ENV):
        cache_dir, source = os.environ[CACHE_ENV], f"${CACHE_ENV}"
    else:
        cache_dir, source = Path.home() / ".cache" / "dualattn", "the default"
    path = Path(cache_dir).expanduser()
    if path in _WRITABLE_CACHE_DIRS:
        return path
    try:
        make_writable_dir(path)
    except OSError as exc:
        hint = f"set {CACHE_ENV} to a writable folder" if source != "cache_dir" else "pass a writable cache_dir"
        raise CacheDirError(
            f"dataset cache folder {path} ({source}) is not writable ({exc.strerror or type(exc).__name__}); {hint}"
        ) from None
    _WRITABLE_CACHE_DIRS.add(path)
    return path


def params_hash(params: dict[str, Any], n: int = 16) -> str:
    """Stable short hex digest of a JSON-serialisable parameter dict."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_stat_key(paths: Sequence[Path], **extra: Any) -> str:
    """Cache key of parsed source files: their resolved paths, sizes and mtimes (plus ``extra``)."""
    return params_hash({**extra, "files": [(str(Path(p).resolve()), Path(p).stat().st_size,
                                           Path(p).stat().st_mtime_ns) for p in paths]})


Chunk = dict[str, np.ndarray]


def cached_chunks(
    chunk_dir: Path,
    make_chunk: Callable[[int], Chunk],
    *,
    count: int | None = None,
    is_valid: Callable[[int, Chunk], bool] | None = None,
) -> Iterator[Chunk]:
    """Chunks ``0, 1, ...`` (``count`` of them, or until the consumer stops).

    Chunk ``i`` is read from ``chunk_dir/chunk{i:05d}.npz``; when that file is
    missing, unreadable or fails ``is_valid(i, chunk)``, ``make_chunk(i)`` builds
    it and it is saved (atomically) before it is yielded. So an interrupted
    generation resumes at the first chunk that was not finished.
    """
    for index in itertools.count() if count is None else range(count):
        path = chunk_dir / f"chunk{index:05d}.npz"
        data = load_npz(path)
        if data is None or (is_valid is not None and not is_valid(index, data)):
            data = make_chunk(index)
            save_npz_atomic(path, **data)
        yield data


def build_from_chunks(
    final: Path,
    make_chunk: Callable[[int], Chunk],
    assemble: Callable[[Iterator[Chunk]], Chunk],
    *,
    count: int | None = None,
    is_valid: Callable[[int, Chunk], bool] | None = None,
) -> Chunk:
    """The arrays cached in ``final`` (``.npz``), built on a miss from resumable chunks.

    On a miss ``assemble`` consumes :func:`cached_chunks` (chunk files live in
    ``final`` with suffix ``.chunks``) and returns the finished arrays; they are
    saved to ``final`` and the chunk folder is removed. When ``assemble`` raises
    ``ValueError`` (the parameters cannot give the data set) the chunks are
    removed as well, since a rerun with the same parameters would fail the same way.
    """
    hit = load_npz(final)
    if hit is not None:
        return hit
    chunk_dir = final.with_suffix(".chunks")
    try:
        out = assemble(cached_chunks(chunk_dir, make_chunk, count=count, is_valid=is_valid))
    except ValueError:
        shutil.rmtree(chunk_dir, ignore_errors=True)
        raise
    save_npz_atomic(final, **out)
    shutil.rmtree(chunk_dir, ignore_errors=True)
    return out


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Write ``np.savez_compressed`` to a temp file and rename it (no half-written caches)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """Read a cache file, or None when it is missing or unreadable (then it is rebuilt)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception:  # corrupt cache: rebuild
        return None


# --------------------------------------------------------------------------- #
# Splits and normalisation
# --------------------------------------------------------------------------- #
def check_fraction(value: float, argname: str, *, allow_zero: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{argname}: expected a float in [0, 1), got {value!r}")
    lo_ok = value >= 0 if allow_zero else value > 0
    if not (lo_ok and value < 1):
        raise ValueError(f"{argname}: expected a float in {'[0' if allow_zero else '(0'}, 1), got {value}")
    return float(value)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified hold-out: ``(keep_idx, held_idx)``, both sorted.

    Each class c with n_c members gives ``round(fraction * n_c)`` rows to the
    hold-out, but always keeps at least one row on the ``keep`` side.
    """
    fraction = check_fraction(fraction, "val_fraction")
    y = np.asarray(y)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A17]))
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(int(np.floor(fraction * len(idx) + 0.5)), len(idx) - 1)
        if k > 0:
            held.append(rng.permutation(idx)[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.ones(len(y), dtype=bool)
    keep[held_idx] = False
    return np.flatnonzero(keep), held_idx.astype(np.int64)


def channel_stats(x: np.ndarray, mask: np.ndarray, eps: float = 1e-8) -> dict[str, np.ndarray]:
    """Per-channel mean/std over valid steps only: ``mean_c = sum_{i,t: m_it} x_itc / sum m``.

    NaN entries (missing values) are ignored as well. A channel with std < eps
    gets std 1 so that normalising never divides by zero.
    """
    valid = np.asarray(mask, dtype=bool)
    vals = np.asarray(x, dtype=np.float64)[valid]  # (num_valid, C)
    if vals.shape[0] == 0:
        raise ValueError("x: no valid time steps to compute normalisation statistics from")
    with np.errstate(all="ignore"):
        mean = np.nanmean(vals, axis=0)
        std = np.nanstd(vals, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std >= eps), std, 1.0)
    return {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}


def apply_stats(x: np.ndarray, mask: np.ndarray, stats: dict[str, np.ndarray]) -> np.ndarray:
    """``(x - mean) / std`` on valid steps; padding stays exactly 0."""
    out = (np.asarray(x, dtype=np.float32) - stats["mean"]) / stats["std"]
    out[~np.asarray(mask, dtype=bool)] = 0.0
    return out.astype(np.float32)


def stats_to_torch(stats: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor] | None:
    if stats is None:
        return None
    return {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in stats.items()}


def reject_options(dataset: str, options: dict[str, Any]) -> None:
    """Raise TypeError for options a loader does not understand."""
    if options:
        raise TypeError(f"load_dataset({dataset!r}): unknown option(s) {sorted(options)}")
