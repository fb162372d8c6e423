"""Backbone feature extraction (batched, cached as memory-mapped ``.npy``) and token reduction.

The lifted convex variables grow like ``d^2 * d * c`` in the token width ``d``, so
features are reduced before fitting heads:

* :func:`pool_patch_grid`: keep CLS, average-pool the ``gh x gw`` patch grid to
  ``g x g`` (``s = 1 + g^2`` tokens);
* :func:`pool_sequence`: text analogue, CLS + means of ``s - 1`` contiguous
  segments of the real tokens;
* :class:`TokenPCA`: PCA of the feature dimension to ``d``, fitted on the
  training split only; ``TokenPCA(None)`` keeps the backbone's full width
  (centring and scaling only, no projection).

The feature cache lives under ``<cache root>/features`` (the project's common
cache root, :func:`dualattn.data.base.resolve_cache_dir`), one folder per
:func:`dualattn.data.base.params_hash` of (task, size, backbone, options).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass
class FeatureSet:
    """Backbone token features: ``tokens (n, T, C)`` float32, ``mask (n, T)`` bool, ``y (n,)`` int64.

    ``grid`` is the patch grid ``(gh, gw)`` for vision backbones (tokens are
    CLS + gh*gw patches in row-major order), ``None`` for text.
    """

    tokens: np.ndarray
    mask: np.ndarray
    y: np.ndarray
    grid: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.tokens.ndim != 3:
            raise ValueError(f"tokens: expected (n, T, C), got shape {self.tokens.shape}")
        n, t = self.tokens.shape[:2]
        if self.mask.shape != (n, t) or self.mask.dtype != np.bool_:
            raise ValueError(f"mask: expected bool ({n}, {t}), got {self.mask.dtype} {self.mask.shape}")
        if self.y.shape != (n,):
            raise ValueError(f"y: expected shape ({n},), got {self.y.shape}")
        if self.grid is not None and 1 + self.grid[0] * self.grid[1] != t:
            raise ValueError(f"grid: {self.grid} does not match T={t} tokens (CLS + gh*gw)")

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def subset(self, idx: np.ndarray) -> "FeatureSet":
        """Rows ``idx`` loaded into memory."""
        return FeatureSet(np.asarray(self.tokens[idx]), np.asarray(self.mask[idx]),
                          np.asarray(self.y[idx]), self.grid, dict(self.meta))


def extract_features(backbone, inputs: Sequence[Any] | np.ndarray, y: np.ndarray, *,
                     cache: str | Path | None = None, batch_size: int = 64,
                     progress: bool = True, desc: str = "features") -> FeatureSet:
    """Encode ``inputs`` batch by batch with ``backbone.encode``; cache to ``cache/`` if given.

    The cache holds ``tokens.npy``, ``mask.npy``, ``y.npy`` (opened memory-mapped)
    and ``meta.json``. ``meta["done"]`` is written after every batch, so an
    interrupted extraction resumes where it stopped.
    """
    y = np.asarray(y, dtype=np.int64)
    n = len(inputs)
    if y.shape != (n,):
        raise ValueError(f"y: expected shape ({n},) to match inputs, got {y.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    grid = backbone.grid
    if cache is None:
        toks, masks = zip(*(backbone.encode(_take(inputs, i, i + batch_size))
                            for i in tqdm(range(0, n, batch_size), desc=desc, disable=not progress)))
        return FeatureSet(np.concatenate(toks), np.concatenate(masks), y, grid,
                          {"backbone": backbone.name, "n": n})
    cache = Path(cache)
    if (fs := load_features(cache, missing_ok=True)) is not None:
        if len(fs) != n or not np.array_equal(fs.y, y):
            raise ValueError(f"cache {cache}: holds different data ({len(fs)} rows); delete it")
        return fs
    cache.mkdir(parents=True, exist_ok=True)
    meta_path = cache / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    first_t, first_m = backbone.encode(_take(inputs, 0, min(batch_size, n)))
    shape = (n, *first_t.shape[1:])
    resume = meta.get("shape") == list(shape) and meta.get("n") == n
    mode = "r+" if resume else "w+"
    tokens = np.lib.format.open_memmap(cache / "tokens.npy", mode=mode, dtype=np.float32, shape=shape)
    mask = np.lib.format.open_memmap(cache / "mask.npy", mode=mode, dtype=np.bool_, shape=shape[:2])
    done = int(meta.get("done", 0)) if resume else 0
    meta = {"backbone": backbone.name, "n": n, "shape": list(shape), "grid": grid, "done": done,
            "complete": False}
    np.save(cache / "y.npy", y)
    starts = range(done, n, batch_size)
    for i in tqdm(starts, desc=desc, disable=not progress, total=len(starts)):
        j = min(i + batch_size, n)
        t, m = (first_t, first_m) if i == 0 and j == len(first_t) else backbone.encode(_take(inputs, i, j))
        tokens[i:j], mask[i:j] = t, m
        tokens.flush(), mask.flush()
        meta["done"] = j
        meta_path.write_text(json.dumps(meta))
    meta["complete"] = True
    meta_path.write_text(json.dumps(meta))
    del tokens, mask
    return load_features(cache)


def load_features(cache: str | Path, *, missing_ok: bool = False) -> FeatureSet | None:
    """Open a complete feature cache memory-mapped (read-only)."""
    cache = Path(cache)
    meta_path = cache / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if not meta.get("complete"):
        if missing_ok:
            return None
        raise FileNotFoundError(f"{cache}: no complete feature cache")
    grid = tuple(meta["grid"]) if meta.get("grid") else None
    return FeatureSet(np.load(cache / "tokens.npy", mmap_mode="r"), np.load(cache / "mask.npy", mmap_mode="r"),
                      np.load(cache / "y.npy"), grid, meta)


def _take(inputs, i: int, j: int):
    return inputs[i:j] if isinstance(inputs, np.ndarray) else list(inputs[i:j])


# --------------------------------------------------------------------------- token reduction
def pool_patch_grid(tokens: np.ndarray, grid: tuple[int, int], g: int, *, keep_cls: bool = True) -> np.ndarray:
    """CLS + adaptive average pool of the ``gh x gw`` patch grid to ``g x g``: ``(n, [1+] g^2, C)``."""
    tokens = np.asarray(tokens, dtype=np.float32)
    gh, gw = grid
    if tokens.ndim != 3 or tokens.shape[1] != 1 + gh * gw:
        raise ValueError(f"tokens: expected (n, 1 + {gh}*{gw}, C), got {tokens.shape}")
    if not 1 <= g <= min(gh, gw):
        raise ValueError(f"g: must be in [1, {min(gh, gw)}], got {g}")
    n, _, c = tokens.shape
    patches = torch.from_numpy(np.ascontiguousarray(tokens[:, 1:])).reshape(n, gh, gw, c).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.adaptive_avg_pool2d(patches, g).permute(0, 2, 3, 1).reshape(n, g * g, c).numpy()
    return np.concatenate([tokens[:, :1], pooled], axis=1) if keep_cls else pooled


def pool_sequence(tokens: np.ndarray, mask: np.ndarray, s: int, *, keep_cls: bool = True) -> np.ndarray:
    """First token (CLS) + means of ``s - 1`` contiguous segments of the remaining real tokens.

    Segment ``k`` of a sequence with real tokens ``1..L-1`` is the ``k``-th of
    ``np.array_split``; an empty segment (``L - 1 < s - 1``) repeats the last token.
    """
    tokens = np.asarray(tokens, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
        raise ValueError(f"tokens/mask: expected (n, T, C) and (n, T), got {tokens.shape}, {mask.shape}")
    k = s - 1 if keep_cls else s
    if k < 1:
        raise ValueError(f"s: must leave at least one pooled segment, got s={s}")
    n, _, c = tokens.shape
    out = np.empty((n, k, c), dtype=np.float32)
    for i in range(n):
        real = np.flatnonzero(mask[i])[1:] if keep_cls else np.flatnonzero(mask[i])
        if real.size == 0:
            real = np.array([0])
        for j, seg in enumerate(np.array_split(real, k)):
            out[i, j] = tokens[i, seg].mean(0) if seg.size else tokens[i, real[-1]]
    return np.concatenate([tokens[:, :1], out], axis=1) if keep_cls else out


def reduce_tokens(fs: FeatureSet, s: int) -> np.ndarray:
    """Reduce a feature set to ``s`` tokens: patch-grid pooling (vision) or segment pooling (text).

    Vision requires ``s = 1 + g^2``; ``s = 1`` keeps only CLS.
    """
    if s < 1:
        raise ValueError(f"s: must be >= 1, got {s}")
    if s == 1:
        return np.asarray(fs.tokens[:, :1], dtype=np.float32)
    if fs.grid is not None:
        g = int(round((s - 1) ** 0.5))
        if g * g != s - 1:
            raise ValueError(f"s: a vision backbone needs s = 1 + g^2 (CLS + g x g grid), got {s}")
        return pool_patch_grid(fs.tokens, fs.grid, g)
    return pool_sequence(fs.tokens, fs.mask, s)


class TokenPCA:
    """PCA of the token feature dimension to ``d``, fitted on training tokens only.

    ``transform(X) = (X - mu) V_d^T / sigma`` with ``mu``, ``V_d`` (top-``d``
    right singular vectors) and the scalar ``sigma`` (RMS of the projected
    training tokens, so the output has unit mean square per coordinate) all
    computed from the ``fit`` data. ``d=None`` keeps the full width ``C``:
    ``transform(X) = (X - mu) / sigma`` (no projection, no rotation).
    """

    def __init__(self, d: int | None):
        if d is not None and d < 1:
            raise ValueError(f"d: must be >= 1 (or None for the full width), got {d}")
        self.d = d
        self.mean_: np.ndarray | None = None
        self.components_: np.ndarray | None = None
        self.scale_: float | None = None
        self.explained_variance_ratio_: np.ndarray | None = None
        self.n_fit_: int | None = None

    @property
    def projects(self) -> bool:
        """False for the full-width identity (``d=None``)."""
        return self.d is not None

    def fit(self, X: np.ndarray) -> "TokenPCA":
        """Fit on ``X (n, s, C)`` (all tokens of the training rows)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 3:
            raise ValueError(f"X: expected (n, s, C), got {X.shape}")
        flat = X.reshape(-1, X.shape[-1])
        self.mean_ = flat.mean(0)
        centred = flat - self.mean_
        if self.d is None:
            self.components_ = None
            self.explained_variance_ratio_ = np.ones(1)
            proj = centred
        else:
            if self.d > min(flat.shape):
                raise ValueError(f"d: {self.d} exceeds min(n*s, C) = {min(flat.shape)}")
            _, sv, vt = np.linalg.svd(centred, full_matrices=False)
            self.components_ = vt[: self.d]
            var = sv ** 2
            self.explained_variance_ratio_ = var[: self.d] / var.sum()
            proj = centred @ self.components_.T
        self.scale_ = float(np.sqrt((proj ** 2).mean())) or 1.0
        self.n_fit_ = X.shape[0]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, s, C) -> (n, s, d)`` float32 (``(n, s, C)`` for the full width)."""
        if self.mean_ is None:
            raise RuntimeError("TokenPCA: call fit() first")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 3 or X.shape[-1] != self.mean_.shape[0]:
            raise ValueError(f"X: expected (n, s, {self.mean_.shape[0]}), got {X.shape}")
        centred = X - self.mean_
        proj = centred if self.components_ is None else centred @ self.components_.T
        return (proj / self.scale_).astype(np.float32)

    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return self.fit(X).transform(X)
