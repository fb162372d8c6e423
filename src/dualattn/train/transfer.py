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


class TransferConfig(BaseModel):
    """Top-level ``dualattn transfer`` config (YAML)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "transfer"
    out_dir: str = "runs/transfer"
    feature_cache: str | None = None  # default: <backbone cache>/../features
    seeds: list[int] = [0, 1, 2]
    loss: Literal["cross_entropy", "squared"] = "cross_entropy"
    beta: float = 1.0
    tasks: list[TaskConfig]
    heads: list[HeadConfig]
    progress: bool = True

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


def prepare_split(task, fs, tc: TaskConfig, seed: int):
    """Split, reduce to ``s`` tokens, PCA to ``d`` fitted on the training rows only."""
    from dualattn.data.transfer_tasks import split_indices

    tr, te = split_indices(task, seed, n_train=tc.n_train)
    Xr = reduce_tokens(fs, tc.tokens)
    pca = TokenPCA(tc.pca_dim).fit(Xr[tr])
    return pca.transform(Xr[tr]), fs.y[tr], pca.transform(Xr[te]), fs.y[te], pca, (tr, te)


def fit_convex_head(hc: HeadConfig, X, y, X_test, y_test, *, loss: str, beta: float, seed: int):
    """Fit a :mod:`dualattn.convex` head; returns ``(HeadResult, ConvexFit)``."""
    from dualattn.convex import fit

    head = _convex_spec(hc, seed)
    Xt, yt = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y, dtype=torch.long)
    t0 = time.perf_counter()
    cf = fit(head, Xt, yt, beta, loss=loss, **hc.options)
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
        task, fs, info = task_features(tc, cache_root, cfg.progress)
        tasks_info[tc.name] = {**info, "tokens": tc.tokens, "pca_dim": tc.pca_dim}
        (out / "tasks.json").write_text(json.dumps(tasks_info, indent=2, default=str))
        for seed in cfg.seeds:
            heads = [h for h in cfg.heads if (tc.name, seed, h.name) not in done]
            if not heads:
                continue
            X, y, Xs, ys, pca, _ = prepare_split(task, fs, tc, seed)
            for hc in heads:
                beta = hc.beta if hc.beta is not None else cfg.beta
                console.log(f"[bold]{tc.name}[/] seed {seed}: {hc.name} (n={len(y)}, s={X.shape[1]}, "
                            f"d={X.shape[2]}, beta={beta})")
                res = _fit_head(hc, X, y, Xs, ys, cfg.loss, beta, seed, out, tc, fs.grid, task)
                if hc.kind != "baseline":
                    res.extra["convex_head"] = hc.head
                rec = {"task": tc.name, "backbone": tc.backbone, "seed": seed, "kind": hc.kind,
                       "n_train": len(y), "n_test": len(ys), "s": int(X.shape[1]), "d": int(X.shape[2]),
                       "pca_explained": float(pca.explained_variance_ratio_.sum()), **res.__dict__}
                console.log(f"  test acc {res.test_acc:.4f}  objective {res.objective:.4g}  "
                            f"gap {res.gap}  {res.time_s:.1f}s")
                with results_path.open("a") as f:
                    f.write(json.dumps(rec, default=str) + "\n")
    if report:
        from dualattn.report.transfer import write_report

        write_report(out)
    return out


def _fit_head(hc: HeadConfig, X, y, Xs, ys, loss, beta, seed, out, tc, grid, task) -> HeadResult:
    if hc.kind == "baseline":
        return fit_baseline(hc.head or hc.name, X, y, Xs, ys, loss=loss, beta=beta, seed=seed, **hc.options)
    if hc.kind == "nonconvex":
        return fit_nonconvex_counterpart(hc.head, X, y, Xs, ys, loss=loss, beta=beta, seed=seed,
                                         head_options=hc.head_options, **hc.options)
    res, cf = fit_convex_head(hc, X, y, Xs, ys, loss=loss, beta=beta, seed=seed)
    if hc.interpret and seed == 0 and grid is not None:
        from dualattn.report.transfer import token_cluster_maps

        path = out / "plots" / f"clusters-{tc.name}-{hc.name.replace(':', '_')}.png"
        try:
            res.extra["cluster_plot"] = str(token_cluster_maps(cf, Xs, ys, tc.tokens, path, task.classes))
        except (ImportError, NotImplementedError) as e:  # interpret not available for this head
            res.extra["cluster_plot_error"] = str(e)
    return res
