"""Transfer-learning runner: frozen backbone features -> convex and baseline heads.

``run_transfer(config)`` does, for every task:

1. build the task inputs (:mod:`dualattn.data.transfer_tasks`), load the
   frozen backbone and extract token features once (cached memory-mapped);
2. for every seed: split, reduce tokens (CLS + pooled grid to ``s`` tokens),
   fit a PCA to ``d`` on the training rows only, and fit every head;
3. append one JSON line per (task, seed, head) to ``results.jsonl`` (a rerun
   skips finished lines, so an interrupted run resumes), then write the report
   (:mod:`dualattn.report.transfer`).

Every head minimises ``sum_i loss_i + beta * penalty`` with the same ``loss`` and
``beta`` (the convex program's convention; nonconvex weight decay ``beta/2 ||W||^2``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dualattn.data.features import TokenPCA, cache_key, extract_features, reduce_tokens
from dualattn.train.heads import BASELINES, HeadResult, fit_baseline, fit_nonconvex_counterpart


class TaskConfig(BaseModel):
    """One task on one backbone."""

    model_config = ConfigDict(extra="forbid")
    name: str
    backbone: str
    image_size: int = 112
    max_length: int = 32
    n: int | None = None
    n_train: int | None = None
    tokens: int = Field(5, ge=1, description="s: CLS + pooled tokens (vision: 1 + g^2)")
    pca_dim: int = Field(16, ge=1, description="d: PCA feature dimension")
    batch_size: int = Field(64, ge=1)
    task_seed: int = 0


class HeadConfig(BaseModel):
    """A head: ``kind`` baseline (linear-probe|mlp|softmax-attention), convex, or nonconvex."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["baseline", "convex", "nonconvex"]
    head: str | None = None  # convex registry name for kind convex/nonconvex
    head_options: dict[str, Any] = {}
    beta: float | None = None
    options: dict[str, Any] = {}  # fit options (solver/tol/max_iter, or epochs/lr/m ...)
    interpret: bool = False  # token-cluster maps over the patch grid (convex self-attention)
    beta_grid: list[float] | None = None  # choose beta on a validation split of the first seed
    beta_from: str | None = None  # reuse the beta chosen for another head (same program -> comparable objectives)
    input: Literal["reduced", "full"] = "reduced"  # "full": s tokens of the raw width C, no PCA (reference)


class TransferConfig(BaseModel):
    """Top-level ``dualattn transfer`` config (YAML)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "transfer"
    out_dir: str = "runs/transfer"
    feature_cache: str | None = None  # default: <backbone cache>/../features
    seeds: list[int] = [0, 1, 2]
    val_fraction: float = Field(0.2, gt=0, lt=1, description="inner validation share for beta_grid")
    loss: Literal["cross_entropy", "squared"] = "cross_entropy"
    beta: float = 1.0
    tasks: list[TaskConfig]
    heads: list[HeadConfig]
    progress: bool = True
    extract_threads: int = Field(2, ge=1, description="torch threads for backbone feature extraction")
    head_threads: int = Field(1, ge=1, description="torch threads for fitting the (small) heads")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if not v:
            raise ValueError("seeds: give at least one seed")
        return v

    @field_validator("heads")
    @classmethod
    def _heads(cls, v):
        names = [h.name for h in v]
        if len(set(names)) != len(names):
            raise ValueError(f"heads: names must be unique, got {names}")
        for h in v:
            if h.kind == "baseline" and h.name not in BASELINES and h.head not in BASELINES:
                raise ValueError(f"heads: baseline {h.name!r} must be one of {BASELINES} (or set head:)")
            if h.kind in ("convex", "nonconvex") and not h.head:
                raise ValueError(f"heads: {h.name!r} of kind {h.kind} needs head: <convex head name>")
            if h.beta_from is not None and h.beta_from not in names[: names.index(h.name)]:
                raise ValueError(f"heads: {h.name!r} beta_from {h.beta_from!r} must name an earlier head")
        return v


def load_config(path: str | Path) -> TransferConfig:
    """Read and validate a YAML config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} not found")
    return TransferConfig.model_validate(yaml.safe_load(path.read_text()))


def feature_cache_root(cfg: TransferConfig) -> Path:
    from dualattn.data.backbones import cache_dir

    return Path(cfg.feature_cache) if cfg.feature_cache else cache_dir().parent / "features"


def task_features(tc: TaskConfig, cache_root: Path, progress: bool = True):
    """``(TaskData, FeatureSet, info)``: task inputs and cached backbone features."""
    from dualattn.data.backbones import load_backbone
    from dualattn.data.transfer_tasks import load_task

    task = load_task(tc.name, n=tc.n, seed=tc.task_seed)
    key = cache_key(task=tc.name, n=len(task), task_seed=tc.task_seed, backbone=tc.backbone,
                    image_size=tc.image_size, max_length=tc.max_length)
    cache = cache_root / f"{tc.name}-{tc.backbone.replace('/', '_')}-{key}"
    t0 = time.perf_counter()
    bb = load_backbone(tc.backbone, image_size=tc.image_size, max_length=tc.max_length)
    if bb.kind != task.kind:
        raise ValueError(f"task {tc.name!r} is {task.kind} but backbone {tc.backbone!r} is {bb.kind}")
    fs = extract_features(bb, task.inputs, task.y, cache=cache, batch_size=tc.batch_size,
                          progress=progress, desc=f"{tc.name}/{tc.backbone}")
    info = {"task": tc.name, "backbone": tc.backbone, "n": len(task), "tokens_raw": int(fs.tokens.shape[1]),
            "dim_raw": int(fs.tokens.shape[2]), "grid": fs.grid, "cache": str(cache),
            "load_and_extract_s": time.perf_counter() - t0, "description": task.description,
            "classes": task.classes, "backbone_info": bb.info}
    return task, fs, info


def prepare_split(task, fs, tc: TaskConfig, seed: int, *, full: bool = False):
    """Split, reduce to ``s`` tokens, PCA to ``d`` fitted on the training rows only.

    ``full=True`` keeps the raw width ``C`` (centred and scaled on the training rows, no projection).
    """
    from dualattn.data.transfer_tasks import split_indices

    tr, te = split_indices(task, seed, n_train=tc.n_train)
    Xr = reduce_tokens(fs, tc.tokens)
    pca = TokenPCA(Xr.shape[-1] if full else tc.pca_dim).fit(Xr[tr])
    return pca.transform(Xr[tr]), fs.y[tr], pca.transform(Xr[te]), fs.y[te], pca, (tr, te)


def inner_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (when possible) inner train/validation split of the training rows."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    strat = y if np.bincount(y).min(initial=len(y)) >= 2 else None
    try:
        return tuple(np.sort(a) for a in train_test_split(idx, test_size=fraction, stratify=strat,
                                                          random_state=seed))
    except ValueError:
        return tuple(np.sort(a) for a in train_test_split(idx, test_size=fraction, random_state=seed))


def fit_convex_head(hc: HeadConfig, X, y, X_test, y_test, *, loss: str, beta: float, seed: int,
                    num_classes: int | None = None):
    """Fit a :mod:`dualattn.convex` head; returns ``(HeadResult, ConvexFit)``."""
    from dualattn.convex import fit

    head = _convex_spec(hc, seed)
    Xt, yt = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y, dtype=torch.long)
    t0 = time.perf_counter()
    cf = fit(head, Xt, yt, beta, loss=loss, num_classes=num_classes, **hc.options)
    elapsed = time.perf_counter() - t0
    acc = lambda A, b: float((_labels(cf.predict(torch.as_tensor(A, dtype=torch.float64))) == b).mean())
    gap = getattr(cf, "gap", None)
    extra = {"rel_gap": _num(getattr(cf, "rel_gap", None)), "solver": hc.options.get("solver"),
             "loss": loss, "beta": beta, "status": getattr(cf, "status", None),
             "iterations": _num(getattr(cf, "iterations", None))}
    Z = getattr(cf, "Z", None)
    params = int(Z.numel()) if isinstance(Z, torch.Tensor) else 0
    res = HeadResult(hc.name, acc(X, np.asarray(y)), acc(X_test, np.asarray(y_test)), float(cf.objective),
                     elapsed, params, gap=_num(gap), extra=extra)
    return res, cf


def _convex_spec(hc: HeadConfig, seed: int):
    from dualattn.convex.heads import get_head

    return get_head(hc.head, **{"seed": seed, **hc.head_options})


def _labels(pred) -> np.ndarray:
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    return p.argmax(1) if p.ndim == 2 else p


def _num(x):
    if x is None:
        return None
    return float(x.item() if isinstance(x, torch.Tensor) else x)


def _done(path: Path) -> set[tuple[str, int, str]]:
    if not path.is_file():
        return set()
    out = set()
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.add((r["task"], r["seed"], r["head"]))
    return out


def run_transfer(cfg: TransferConfig | str | Path, *, report: bool = True, console=None) -> Path:
    """Run every (task, seed, head) not yet in ``out_dir/results.jsonl``; write the report; return out_dir."""
    if not isinstance(cfg, TransferConfig):
        cfg = load_config(cfg)
    from rich.console import Console

    console = console or Console(stderr=True)
    threads_before = torch.get_num_threads()
    try:
        _run(cfg, console)
    finally:
        torch.set_num_threads(threads_before)
    out = Path(cfg.out_dir)
    if report:
        from dualattn.report.transfer import write_report

        write_report(out)
    return out


def _run(cfg: TransferConfig, console) -> None:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    results_path = out / "results.jsonl"
    done = _done(results_path)
    tasks_info = json.loads((out / "tasks.json").read_text()) if (out / "tasks.json").is_file() else {}
    cache_root = feature_cache_root(cfg)
    for tc in cfg.tasks:
        todo = [(s, h) for s in cfg.seeds for h in cfg.heads if (tc.name, s, h.name) not in done]
        if not todo:
            continue
        torch.set_num_threads(cfg.extract_threads)
        task, fs, info = task_features(tc, cache_root, cfg.progress)
        torch.set_num_threads(cfg.head_threads)
        tasks_info[tc.name] = {**info, "tokens": tc.tokens, "pca_dim": tc.pca_dim}
        (out / "tasks.json").write_text(json.dumps(tasks_info, indent=2, default=str))
        betas = _select_betas(cfg, tc, task, fs, out, console)
        for seed in cfg.seeds:
            heads = [h for h in cfg.heads if (tc.name, seed, h.name) not in done]
            if not heads:
                continue
            split = prepare_split(task, fs, tc, seed)
            full = prepare_split(task, fs, tc, seed, full=True) if any(h.input == "full" for h in heads) else None
            for hc in heads:
                X, y, Xs, ys, pca, (_, te) = full if hc.input == "full" else split
                beta = betas[hc.name]
                console.log(f"[bold]{tc.name}[/] seed {seed}: {hc.name} (n={len(y)}, s={X.shape[1]}, "
                            f"d={X.shape[2]}, beta={beta:g})")
                res = _fit_head(hc, X, y, Xs, ys, cfg.loss, beta, seed, out, tc, fs.grid, task, te)
                res.head = hc.name
                res.extra["beta_selected"] = hc.beta_grid is not None or hc.beta_from is not None
                if hc.kind != "baseline":
                    res.extra["convex_head"] = hc.head
                rec = {"task": tc.name, "backbone": tc.backbone, "seed": seed, "kind": hc.kind,
                       "n_train": len(y), "n_test": len(ys), "s": int(X.shape[1]), "d": int(X.shape[2]),
                       "pca_explained": float(pca.explained_variance_ratio_.sum()), **res.__dict__}
                console.log(f"  test acc {res.test_acc:.4f}  objective {res.objective:.4g}  "
                            f"gap {res.gap}  {res.time_s:.1f}s")
                with results_path.open("a") as f:
                    f.write(json.dumps(rec, default=str) + "\n")


def _select_betas(cfg: TransferConfig, tc: TaskConfig, task, fs, out: Path, console) -> dict[str, float]:
    """beta per head: fixed, from ``beta_grid`` (best validation accuracy on an inner split of the
    first seed's training rows; ties go to the larger beta), or copied via ``beta_from``.
    Selections are stored in ``beta_selection.json`` and reused on resume."""
    path = out / "beta_selection.json"
    store = json.loads(path.read_text()) if path.is_file() else {}
    sel = store.setdefault(tc.name, {})
    betas: dict[str, float] = {}
    cache = {}
    seed = cfg.seeds[0]
    for hc in cfg.heads:
        if hc.beta_from is not None:
            betas[hc.name] = betas[hc.beta_from]
            continue
        if hc.beta_grid is None:
            betas[hc.name] = hc.beta if hc.beta is not None else cfg.beta
            continue
        if hc.name not in sel:
            if hc.input not in cache:
                X, y, *_ = prepare_split(task, fs, tc, seed, full=hc.input == "full")
                tr, va = inner_split(y, cfg.val_fraction, 1000 + seed)
                cache[hc.input] = (X[tr], y[tr], X[va], y[va])
            Xa, ya, Xb, yb = cache[hc.input]
            scores = {}
            for b in hc.beta_grid:
                scores[str(b)] = _fit_head(hc.model_copy(update={"interpret": False}), Xa, ya, Xb, yb,
                                           cfg.loss, b, seed, out, tc, None, task).test_acc
                console.log(f"  beta search {tc.name}/{hc.name}: beta={b:g} val acc {scores[str(b)]:.4f}")
            best = max(hc.beta_grid, key=lambda b: (scores[str(b)], b))
            sel[hc.name] = {"val_acc": scores, "beta": best, "seed": seed, "val_fraction": cfg.val_fraction}
            path.write_text(json.dumps(store, indent=2))
        betas[hc.name] = float(sel[hc.name]["beta"])
    return betas


def _fit_head(hc: HeadConfig, X, y, Xs, ys, loss, beta, seed, out, tc, grid, task, test_idx=None) -> HeadResult:
    c = len(task.classes)
    if hc.kind == "baseline":
        return fit_baseline(hc.head or hc.name, X, y, Xs, ys, loss=loss, beta=beta, seed=seed, num_classes=c,
                            **hc.options)
    if hc.kind == "nonconvex":
        return fit_nonconvex_counterpart(hc.head, X, y, Xs, ys, loss=loss, beta=beta, seed=seed,
                                         head_options=hc.head_options, num_classes=c, **hc.options)
    res, cf = fit_convex_head(hc, X, y, Xs, ys, loss=loss, beta=beta, seed=seed, num_classes=c)
    if hc.interpret and seed == 0 and grid is not None:
        from dualattn.report.transfer import token_cluster_maps

        path = out / "plots" / f"clusters-{tc.name}-{hc.name.replace(':', '_')}.png"
        try:
            images = None if test_idx is None or task.kind != "vision" else np.asarray(task.inputs)[test_idx]
            token_cluster_maps(cf, Xs, ys, tc.tokens, path, task.classes, images)
            res.extra["cluster_plot"] = path.relative_to(out).as_posix()
        except (ImportError, NotImplementedError, ValueError, TypeError) as e:  # head not interpretable
            res.extra["cluster_plot_error"] = str(e)
    return res
