"""Pathfinder generator (Linsley et al. 2018; the 32x32 task of Long Range Arena).

Every image holds two long curvy dashed paths A and B, ``n_distractors``
shorter dashed paths and two endpoint circles. Positive (label 1): the circles
sit on both ends of A. Negative (label 0): one circle ends A, the other ends B.
So both classes contain the same kinds and numbers of strokes, and the
Euclidean distance between the circles is restricted to ``endpoint_dist`` in
both classes, so neither stroke counts nor circle distance give the answer
away; only following the path does.

Paths are smooth random walks: step ``STEP`` px, heading
``theta_{t+1} = theta_t + omega_t * STEP`` with angular velocity
``omega_t = clip(w_t, -curvature, curvature)`` where ``w_t = RHO w_{t-1} + N(0, curvature_jitter^2)``
(mean-reverting, so paths wiggle instead of closing into loops);
they stay inside the canvas, do not come back on themselves, and keep
``min_sep`` px away from every other path. Rendering is anti-aliased:
a stroke pixel has intensity ``clip(1 - d / line_width, 0, 1)`` (``d`` = distance
to the dashed centre line) and a circle ``clip(radius + 0.5 - d, 0, 1)``; images
are stored as uint8 (0..255) like LRA's PNGs.

Samples are generated in chunks seeded by ``(seed, chunk)`` (deterministic,
cached, resumable); labels are balanced within each chunk. ``load_dataset``
returns float intensities ``(n, size*size, 1)`` (z-scored with train
statistics by default) or, with ``as_tokens=True``, pixel ids ``(n, size*size)``
with ``vocab_size=256`` (every step is real: the mask is all True).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .base import (
    SequenceData,
    apply_stats,
    build_from_chunks,
    channel_stats,
    check_fraction,
    file_stat_key,
    load_npz,
    params_hash,
    register_dataset,
    reject_options,
    resolve_cache_dir,
    save_npz_atomic,
    stats_to_torch,
)

STEP = 0.5  # px between successive centre-line points
RHO = 0.9  # persistence of the angular velocity
CLASSES = ["disconnected", "connected"]
_CACHE_VERSION = 1
_LRA_CACHE_VERSION = 1
PATHFINDER_DIFFICULTY = {
    "easy": "curv_baseline",
    "intermediate": "curv_contour_length_9",
    "hard": "curv_contour_length_14",
}


@dataclass(frozen=True)
class PathfinderConfig:
    """Generator parameters (lengths in pixels)."""

    n_train: int = 40_000
    n_val: int = 5_000
    n_test: int = 5_000
    size: int = 32
    path_len: float = 22.0
    distractor_len: float = 11.0
    n_distractors: int = 2
    curvature: float = 0.3
    curvature_jitter: float = 0.12
    dash_len: float = 2.5
    gap_len: float = 1.5
    line_width: float = 1.0
    circle_radius: float = 1.2
    min_sep: float = 2.0
    endpoint_dist: tuple[float, float] = (6.0, 18.0)
    chunk_size: int = 1_000

    def validate(self) -> "PathfinderConfig":
        for f in ("n_train", "n_val", "n_test", "size", "n_distractors", "chunk_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{f}: expected an int, got {v!r}")
            if v < 0:
                raise ValueError(f"{f}: expected >= 0, got {v}")
        if self.n_train + self.n_val + self.n_test == 0:
            raise ValueError("n_train + n_val + n_test: expected at least one sample")
        if not 8 <= self.size <= 256:
            raise ValueError(f"size: expected 8..256 pixels, got {self.size}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {self.chunk_size}")
        for f in ("path_len", "distractor_len", "dash_len", "line_width", "circle_radius"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"{f}: expected a positive number, got {v!r}")
        for f in ("curvature", "curvature_jitter", "gap_len", "min_sep"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{f}: expected a number >= 0, got {v!r}")
        if self.path_len > 2.5 * self.size:
            raise ValueError(f"path_len: {self.path_len} px does not fit a {self.size}px canvas (max {2.5 * self.size})")
        lo, hi = self.endpoint_dist
        if not 0 <= lo < hi:
            raise ValueError(f"endpoint_dist: expected (lo, hi) with 0 <= lo < hi, got {self.endpoint_dist}")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    "pathfinder": {},
    "pathfinder-small": dict(n_train=4_000, n_val=500, n_test=1_000),
}


# --------------------------------------------------------------------------- #
# Drawing
# --------------------------------------------------------------------------- #
def random_path(rng: np.random.Generator, length: float, cfg: PathfinderConfig, tries: int = 16) -> np.ndarray | None:
    """Centre line of a smooth random walk as ``(P, 2)`` points (x, y), or None if none fit.

    ``tries`` candidate walks are drawn at once (vectorised); the first that stays
    inside the canvas and never comes back on itself is returned.
    """
    from scipy.signal import lfilter

    n = max(2, int(round(length / STEP)))
    margin = 1.5
    hi = cfg.size - 1 - margin
    start = rng.uniform(margin, hi, size=(tries, 1, 2))
    # AR(1) angular velocity: omega_t = RHO * omega_{t-1} + N(0, jitter^2), then clipped
    noise = rng.normal(0.0, cfg.curvature_jitter, size=(tries, n - 1))
    noise[:, 0] = rng.uniform(-cfg.curvature, cfg.curvature, size=tries)
    omega = np.clip(lfilter([1.0], [1.0, -RHO], noise, axis=1), -cfg.curvature, cfg.curvature)  # (tries, n-1)
    theta = rng.uniform(0, 2 * np.pi, size=(tries, 1)) + np.concatenate(
        [np.zeros((tries, 1)), np.cumsum(omega[:, :-1] * STEP, axis=1)], axis=1)
    steps = STEP * np.stack([np.cos(theta), np.sin(theta)], axis=-1)  # (tries, n-1, 2)
    pts = np.concatenate([start, start + np.cumsum(steps, axis=1)], axis=1)  # (tries, n, 2)
    inside = (pts.min(axis=(1, 2)) >= margin) & (pts.max(axis=(1, 2)) <= hi)
    # no self-approach: points > 3 px apart along the path are >= 1.5 px apart in space
    far = np.abs(np.arange(n)[:, None] - np.arange(n)[None]) * STEP > 3.0
    for t in np.flatnonzero(inside):
        d2 = ((pts[t, :, None] - pts[t, None]) ** 2).sum(-1)
        if not (d2[far] < 1.5**2).any():
            return pts[t]
    return None


def _far_from(pts: np.ndarray, others: list[np.ndarray], min_sep: float) -> bool:
    from scipy.spatial.distance import cdist

    return all(cdist(pts, o).min() >= min_sep for o in others)


def _dashed(pts: np.ndarray, cfg: PathfinderConfig) -> np.ndarray:
    """Keep the points whose arc position falls on a dash (period ``dash_len + gap_len``)."""
    s = np.arange(len(pts)) * STEP
    period = cfg.dash_len + cfg.gap_len
    return pts[(s % period) < cfg.dash_len] if cfg.gap_len > 0 else pts


@lru_cache(maxsize=8)
def _grid(size: int) -> np.ndarray:
    """Pixel centres ``(size*size, 2)`` as (x, y), row-major."""
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)


def render(strokes: list[np.ndarray], circles: list[np.ndarray], cfg: PathfinderConfig) -> np.ndarray:
    """Anti-aliased ``(size, size)`` float image in [0, 1] (see module doc for the formula)."""
    from scipy.spatial import cKDTree
    from scipy.spatial.distance import cdist

    grid = _grid(cfg.size)
    img = np.zeros(grid.shape[0])
    if strokes:
        d, _ = cKDTree(np.concatenate(strokes)).query(grid, distance_upper_bound=cfg.line_width)
        img = np.maximum(img, np.clip(1.0 - d / cfg.line_width, 0.0, 1.0))  # d = inf beyond the bound -> 0
    if circles:
        d = cdist(grid, np.asarray(circles)).min(axis=1)
        img = np.maximum(img, np.clip(cfg.circle_radius + 0.5 - d, 0.0, 1.0))
    return img.reshape(cfg.size, cfg.size)


def sample_image(
    rng: np.random.Generator, label: int, cfg: PathfinderConfig, tries: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """One image (float ``(size, size)``) with the given label (1 = circles connected by a path)
    and the circle centres ``(2, 2)`` as (x, y)."""
    lo, hi = cfg.endpoint_dist
    for _ in range(tries):
        a = random_path(rng, cfg.path_len, cfg)
        if a is None:
            continue
        end_a = int(rng.integers(2))
        circ_a = a[-1] if end_a else a[0]
        if label == 1:
            circ_b = a[0] if end_a else a[-1]
            if not lo <= np.linalg.norm(circ_a - circ_b) <= hi:
                continue
        b = random_path(rng, cfg.path_len, cfg)
        if b is None or not _far_from(b, [a], cfg.min_sep):
            continue
        if label == 0:
            circ_b = b[-1] if rng.integers(2) else b[0]
            if not lo <= np.linalg.norm(circ_a - circ_b) <= hi:
                continue
        paths = [a, b]
        for _k in range(cfg.n_distractors):
            for _t in range(20):
                d = random_path(rng, cfg.distractor_len, cfg)
                if d is not None and _far_from(d, paths, cfg.min_sep):
                    paths.append(d)
                    break
        if len(paths) != 2 + cfg.n_distractors:
            continue
        return render([_dashed(p, cfg) for p in paths], [circ_a, circ_b], cfg), np.stack([circ_a, circ_b])
    raise ValueError(
        f"Pathfinder: could not place {2 + cfg.n_distractors} paths in {tries} tries; "
        "use a larger size, shorter path_len or fewer n_distractors"
    )


def generate_chunk(cfg: PathfinderConfig, seed: int, chunk: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 ``(n, size, size)``) and balanced labels from the stream ``(seed, chunk)``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(chunk), 0x9A7F]))
    labels = rng.permutation(np.arange(n) % 2).astype(np.int64)
    images = np.empty((n, cfg.size, cfg.size), dtype=np.uint8)
    for i, lab in enumerate(labels):
        images[i] = np.round(sample_image(rng, int(lab), cfg)[0] * 255).astype(np.uint8)
    return images, labels


def generate_pathfinder(
    cfg: PathfinderConfig, seed: int = 0, cache_dir: str | os.PathLike | None = None, *, progress: bool = True
) -> dict[str, np.ndarray]:
    """All splits (``images, labels, sizes``), cached as one ``.npz``; chunks make it resumable."""
    cfg.validate()
    key = params_hash({"v": _CACHE_VERSION, "seed": int(seed), **asdict(cfg)})
    final = resolve_cache_dir(cache_dir) / "pathfinder" / f"pathfinder-{key}.npz"
    total = cfg.n_train + cfg.n_val + cfg.n_test
    n_chunks = -(-total // cfg.chunk_size)

    def chunk_len(index: int) -> int:
        return min(cfg.chunk_size, total - index * cfg.chunk_size)

    def make_chunk(index: int) -> dict[str, np.ndarray]:
        im, lab = generate_chunk(cfg, seed, index, chunk_len(index))
        return {"images": im, "labels": lab}

    def assemble(chunks) -> dict[str, np.ndarray]:
        imgs, labs = [], []
        with tqdm(total=total, desc=f"Pathfinder (seed {seed})", disable=not progress, unit="img") as bar:
            for data in chunks:
                imgs.append(data["images"])
                labs.append(data["labels"])
                bar.update(len(data["labels"]))
        return {
            "images": np.concatenate(imgs),
            "labels": np.concatenate(labs),
            "sizes": np.array([cfg.n_train, cfg.n_val, cfg.n_test], dtype=np.int64),
        }

    return build_from_chunks(final, make_chunk, assemble, count=n_chunks,
                             is_valid=lambda index, data: len(data["labels"]) == chunk_len(index))


def images_to_sequences(
    images: np.ndarray,
    labels: np.ndarray,
    train_images: np.ndarray,
    *,
    name: str,
    split: str,
    classes: list[str],
    as_tokens: bool,
    normalize: bool,
    meta: dict[str, Any],
) -> SequenceData:
    """uint8 images ``(n, H, W)`` -> pixel sequences in row-major order.

    Tokens: ids = intensity (0..255), ``vocab_size=256``. Continuous:
    ``x = intensity / 255`` as ``(n, H*W, 1)``, z-scored with the statistics of
    ``train_images`` when ``normalize``.
    """
    n = images.shape[0]
    seq = images.reshape(n, -1)
    mask = np.ones(seq.shape, dtype=bool)
    if as_tokens:
        return SequenceData(seq.astype(np.int64), mask, labels, classes, vocab_size=256,
                            name=name, split=split, meta=meta)
    x = (seq.astype(np.float32) / 255.0)[:, :, None]
    stats = None
    if normalize:
        tr = (train_images.reshape(train_images.shape[0], -1).astype(np.float32) / 255.0)[:, :, None]
        stats = channel_stats(tr, np.ones(tr.shape[:2], dtype=bool))
        x = apply_stats(x, mask, stats)
    return SequenceData(x, mask, labels, classes, name=name, split=split, stats=stats_to_torch(stats), meta=meta)


def split_bounds(sizes: np.ndarray, split: str) -> tuple[int, int]:
    n_tr, n_va, n_te = (int(v) for v in sizes)
    lo, hi = {"train": (0, n_tr), "val": (n_tr, n_tr + n_va), "test": (n_tr + n_va, n_tr + n_va + n_te)}[split]
    if hi == lo:
        raise ValueError(f"split={split!r}: this configuration has no {split} samples (n_{split}=0)")
    return lo, hi


def load_pathfinder(
    split: str,
    *,
    preset: str = "pathfinder",
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    as_tokens: bool = False,
    normalize: bool = True,
    progress: bool = True,
    **options: Any,
) -> SequenceData:
    """Generated Pathfinder split; ``options`` override :class:`PathfinderConfig` fields.

    With ``root=`` the official LRA Pathfinder files are read instead
    (see :func:`load_lra_pathfinder`).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    if root is not None:
        return load_lra_pathfinder(split, root=root, cache_dir=cache_dir, seed=seed, as_tokens=as_tokens,
                                   normalize=normalize, **options)
    fields = set(PathfinderConfig.__dataclass_fields__)
    reject_options(preset, {k: v for k, v in options.items() if k not in fields})
    if "endpoint_dist" in options:
        ed = options["endpoint_dist"]
        if not isinstance(ed, (tuple, list)) or len(ed) != 2:
            raise ValueError(f"endpoint_dist: expected a pair (lo, hi), got {ed!r}")
        options = {**options, "endpoint_dist": (float(ed[0]), float(ed[1]))}
    cfg = PathfinderConfig(**{**PRESETS[preset], **options}).validate()
    if normalize and not as_tokens and cfg.n_train == 0:
        raise ValueError("normalize=True needs training images (n_train > 0) for the statistics")
    data = generate_pathfinder(cfg, seed, cache_dir, progress=progress)
    lo, hi = split_bounds(data["sizes"], split)
    return images_to_sequences(
        data["images"][lo:hi], data["labels"][lo:hi], data["images"][: cfg.n_train],
        name=preset, split=split, classes=CLASSES, as_tokens=as_tokens, normalize=normalize,
        meta={"config": asdict(cfg), "seed": seed, "image_shape": (cfg.size, cfg.size)},
    )


@register_dataset("pathfinder")
def _load_pf(name: str, split: str, **kw: Any) -> SequenceData:
    return load_pathfinder(split, preset="pathfinder", **kw)


@register_dataset("pathfinder-small")
def _load_pf_small(name: str, split: str, **kw: Any) -> SequenceData:
    return load_pathfinder(split, preset="pathfinder-small", **kw)


# --------------------------------------------------------------------------- #
# Official LRA Pathfinder files
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
        cfile = resolve_cache_dir(cache_dir) / "lra" / f"pathfinder-{file_stat_key(metas, v=_LRA_CACHE_VERSION, res=resolution)}.npz"
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
