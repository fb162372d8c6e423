"""Transfer-learning runner: frozen backbone features -> convex and baseline heads.

``run_transfer(config)`` does, for every task:

1. build the task inputs (:mod:`dualattn.transfer.tasks`), load the frozen
   backbone and extract token features once (cached memory-mapped under
   ``<cache root>/features``);
2. reduce every example to ``s`` tokens (CLS + pooled grid / segments), then for
   every seed and token width: split, fit the width's PCA on the training rows
   only (the backbone's full width: centring and scaling only), and fit every head;
3. choose beta per (head, width) on a validation split of the first seed's
   training rows, extending the grid by a decade when the best value sits at
   one of its ends (:func:`select_beta`);
4. append one :class:`~dualattn.transfer.records.TransferResult` per
   (task, seed, head, width) to ``results.jsonl`` (a rerun skips finished
   records, so an interrupted run resumes) and write the report
   (:mod:`dualattn.transfer.report`).

Every head minimises ``sum_i loss_i + beta * penalty`` with the same ``loss`` and
``beta`` (the convex program's convention; nonconvex weight decay ``beta/2 ||W||^2``).
Every convex solve is asked for a relative duality gap ``certify_tol`` and its
record says whether it got there (``certified``, ``status``, ``rel_gap``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import yaml

from dualattn.transfer.config import HeadConfig, TaskConfig, TransferConfig, load_config
from dualattn.transfer.features import TokenPCA, extract_features, reduce_tokens
from dualattn.transfer.heads import HeadResult, fit_baseline, fit_nonconvex_counterpart
from dualattn.transfer.records import (BetaSelection, BetaSolve, RecordError, SolveInfo, TaskInfo, TransferResult,
                                       append_jsonl, finite_or_none, read_beta_selections, read_beta_solves, read_results,
                                       read_tasks, write_tasks)

__all__ = ["TaskConfig", "HeadConfig", "TransferConfig", "load_config", "run_transfer", "feature_cache_root",
           "task_features", "prepare_split", "inner_split", "select_beta", "resolve_solver", "fit_convex_head"]


def feature_cache_root(cfg: TransferConfig) -> Path:
    """``cfg.feature_cache``, else ``<common cache root>/features`` (``$DUALATTN_CACHE`` or ~/.cache/dualattn)."""
    from dualattn.data.base import resolve_cache_dir

    return Path(cfg.feature_cache).expanduser() if cfg.feature_cache else resolve_cache_dir() / "features"


def task_features(tc: TaskConfig, cache_root: Path, progress: bool = True):
    """``(TaskData, FeatureSet, info)``: task inputs and cached backbone features."""
    from dualattn.data.base import params_hash
    from dualattn.transfer.backbones import load_backbone
    from dualattn.transfer.tasks import load_task

    task = load_task(tc.name, n=tc.n, seed=tc.task_seed)
    key = params_hash(dict(task=tc.name, n=len(task), task_seed=tc.task_seed, backbone=tc.backbone,
                           image_size=tc.image_size, max_length=tc.max_length))
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


def prepare_split(task, fs, tc: TaskConfig, seed: int, width: int | None = None, *,
                  reduced: np.ndarray | None = None):
    """Split, reduce to ``s`` tokens, PCA to ``width`` fitted on the training rows only.

    ``width=None`` or the backbone width ``C`` keeps every feature (centred and
    scaled on the training rows, no projection). ``reduced`` passes the already
    reduced tokens ``(n, s, C)``. Returns ``(X, y, X_test, y_test, pca, (train_idx, test_idx))``.
    """
    from dualattn.transfer.tasks import split_indices

    tr, te = split_indices(task, seed, n_train=tc.n_train)
    Xr = reduce_tokens(fs, tc.tokens) if reduced is None else reduced
    full = width is None or width == Xr.shape[-1]
    pca = TokenPCA(None if full else width).fit(Xr[tr])
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


def select_beta(score: Callable[[float], float], grid: list[float], max_extend: int):
    """Best beta by ``score`` (validation accuracy; ties go to the larger beta) on ``grid``.

    While the best value is the smallest (largest) beta tried, the grid is
    extended by one decade below (above), at most ``max_extend`` times per side.
    Returns ``(beta, scores {beta: score}, extended [betas added, in order], at_edge)``
    with ``at_edge`` in ``{None, "lower", "upper"}`` for a choice still at an end.
    """
    scores = {float(b): score(float(b)) for b in sorted(grid)}
    extended: list[float] = []
    up = down = 0
    while True:
        best = max(scores, key=lambda b: (scores[b], b))
        lo, hi = min(scores), max(scores)
        if best == hi and up < max_extend:
            new, up = float(f"{hi * 10:.12g}"), up + 1
        elif best == lo and down < max_extend:
            new, down = float(f"{lo / 10:.12g}"), down + 1
        else:
            break
        scores[new] = score(new)
        extended.append(new)
    best = max(scores, key=lambda b: (scores[b], b))
    at_edge = "upper" if best == max(scores) else "lower" if best == min(scores) else None
    return best, dict(sorted(scores.items())), extended, at_edge


def resolve_solver(name: str) -> str:
    """The convex solver to pass to ``dualattn.convex.fit``: ``name`` checked against
    :data:`dualattn.convex.api.SOLVERS` (``"auto"`` picks by problem size and loss)."""
    from dualattn.convex.api import SOLVERS

    if name in SOLVERS:
        return name
    raise ValueError(f"solver: expected one of {SOLVERS}, got {name!r}")


def fit_convex_head(hc: HeadConfig, X, y, X_test, y_test, *, loss: str, beta: float, seed: int,
                    num_classes: int | None = None, solver: str = "auto", tol: float = 1e-3):
    """Fit a :mod:`dualattn.convex` head; returns ``(HeadResult, ConvexFit)``.

    ``hc.options`` go to ``fit`` and override ``solver``/``tol``; the certificate
    (``rel_gap``, ``status``, ``iterations``, the solver that ran) and the caps given
    (``max_time``, ``max_iter``) are in ``extra``.
    """
    from dualattn.convex import fit
    from dualattn.convex.heads import get_head

    opts = {"solver": solver, "tol": tol, **hc.options}
    opts["solver"] = resolve_solver(opts["solver"])
    head = get_head(hc.head, **{"seed": seed, **hc.head_options})
    Xt, yt = torch.as_tensor(X, dtype=torch.float64), torch.as_tensor(y, dtype=torch.long)
    t0 = time.perf_counter()
    cf = fit(head, Xt, yt, beta, loss=loss, num_classes=num_classes, **opts)
    elapsed = time.perf_counter() - t0
    acc = lambda A, b: float((_labels(cf.predict(torch.as_tensor(A, dtype=torch.float64))) == b).mean())
    extra = {"rel_gap": finite_or_none(getattr(cf, "rel_gap", None)), "solver": getattr(cf, "solver", opts["solver"]),
             "loss": loss, "beta": beta, "status": getattr(cf, "status", None),
             "iterations": getattr(cf, "iterations", None), "tol": opts["tol"],
             **{cap: opts[cap] for cap in ("max_time", "max_iter") if opts.get(cap) is not None}}
    res = HeadResult(hc.name, acc(X, np.asarray(y)), acc(X_test, np.asarray(y_test)), float(cf.objective),
                     elapsed, _num_params(cf), gap=finite_or_none(getattr(cf, "gap", None)), extra=extra)
    return res, cf


def _num_params(cf) -> int:
    """Entries ``P p q`` of the convex variable ``Z`` (from the factors' shapes for a factorised fit:
    its dense ``Z`` is never formed, it may not fit in memory at backbone width)."""
    if getattr(cf, "is_factorised", False):
        A, B = cf.factors
        return int(A.shape[0] * A.shape[1] * B.shape[1])
    Z = getattr(cf, "Z", None)
    return int(Z.numel()) if isinstance(Z, torch.Tensor) else 0


def _labels(pred) -> np.ndarray:
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    return p.argmax(1) if p.ndim == 2 else p


def run_transfer(cfg: TransferConfig | str | Path, *, report: bool = True, console=None,
                 tasks: list[str] | None = None, heads: list[str] | None = None,
                 widths: list[int | str] | None = None, seeds: list[int] | None = None) -> Path:
    """Run every (task, seed, head, width) not yet in ``out_dir/results.jsonl``; write the report; return out_dir.

    ``tasks`` / ``heads``: run only these tasks / heads of the config (e.g. one task per process,
    all writing to the same ``out_dir``: records are appended line by line and ``tasks.json`` is
    merged, not overwritten).  A head whose beta comes from another head (``beta_from``) reuses
    that head's stored selection, or makes it if it is not stored yet.  ``widths``: run only these
    token widths (ints, or ``"full"`` for the backbone width), e.g. d = 128 for every seed before d = 384.
    ``seeds``: run only these of the config's seeds (beta is still chosen on the config's first seed),
    e.g. one process per seed.  Before each fit the run re-reads ``results.jsonl`` and, for a missing
    beta selection, ``beta_selection.jsonl``, so it skips what another process sharing ``out_dir`` has
    finished meanwhile.
    """
    if not isinstance(cfg, TransferConfig):
        cfg = load_config(cfg)
    for what, unknown, names in unknown_choices(cfg, tasks, heads, seeds):
        raise ValueError(f"{what}: {unknown} not in the config (its {what}: {names})")
    only_widths = parse_widths(widths)
    from rich.console import Console

    console = console or Console(stderr=True)
    threads_before = torch.get_num_threads()
    try:
        _Run(cfg, console, set(tasks) if tasks else None, set(heads) if heads else None, only_widths,
             set(seeds) if seeds else None).run()
    finally:
        torch.set_num_threads(threads_before)
    out = Path(cfg.out_dir)
    if report:
        from dualattn.transfer.report import write_report

        write_report(out)
    return out


def unknown_choices(cfg: TransferConfig, tasks: list[str] | None, heads: list[str] | None,
                    seeds: list[int] | None = None):
    """``[(what, unknown choices, the config's choices)]`` for ``what`` in ``"tasks"``, ``"heads"``,
    ``"seeds"`` (empty: all known)."""
    out = []
    for what, chosen, names in (("tasks", tasks, [tc.name for tc in cfg.tasks]),
                                ("heads", heads, [hc.name for hc in cfg.heads]),
                                ("seeds", seeds, list(cfg.seeds))):
        unknown = [t for t in chosen or [] if t not in names]
        if unknown:
            out.append((what, unknown, names))
    return out


def parse_widths(widths: list[int | str] | None) -> set[int | str] | None:
    """``{int widths} | {"full"}`` from e.g. ``["128", "full"]`` (None or empty: every width)."""
    if not widths:
        return None
    out: set[int | str] = set()
    for w in widths:
        if str(w).strip().lower() == "full":
            out.add("full")
            continue
        try:
            v = int(w)
        except (TypeError, ValueError):
            raise ValueError(f"widths: expected positive integers or 'full', got {w!r}") from None
        if v <= 0:
            raise ValueError(f"widths: expected positive integers or 'full', got {w!r}")
        out.add(v)
    return out


def head_widths(hc: HeadConfig, tc: TaskConfig, full_width: int) -> list[int]:
    """Integer widths head ``hc`` runs at on task ``tc`` (backbone width ``full_width``)."""
    if hc.input == "full":
        return [full_width]
    spec = tc.model_copy(update={"widths": hc.widths}) if hc.widths is not None else tc
    return spec.resolve_widths(full_width)


def _reread(read, out: Path) -> list:
    """``read(out)`` during a run; ``[]`` while another process is mid-way through appending a line
    (the records it had are already known; the next re-read sees the finished line)."""
    try:
        return read(out)
    except RecordError:
        return []


class _Run:
    """One ``run_transfer`` call: resumable state (finished records, beta selections) and the loops."""

    def __init__(self, cfg: TransferConfig, console, only_tasks: set[str] | None = None,
                 only_heads: set[str] | None = None, only_widths: set[int | str] | None = None,
                 only_seeds: set[int] | None = None):
        self.cfg, self.console = cfg, console
        self.only_widths, self.only_seeds = only_widths, only_seeds
        # None: every task / head; config.yaml keeps the whole config, beta_from resolves to any head of it
        self.only_tasks, self.only_heads = only_tasks, only_heads
        self.out = Path(cfg.out_dir)
        self.results_path = self.out / "results.jsonl"
        self.by_name = {h.name: h for h in cfg.heads}

    def run(self) -> None:
        cfg, out = self.cfg, self.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        self.done = {r.key for r in read_results(out)}
        self.selections = {s.key: s for s in read_beta_selections(out)}
        self.beta_solves: dict[tuple, dict[float, BetaSolve]] = {}  # finished fits of unfinished searches
        for b in read_beta_solves(out):
            self.beta_solves.setdefault(b.key, {})[b.beta] = b
        tasks_info = read_tasks(out)
        cache_root = feature_cache_root(cfg)
        for tc in cfg.tasks:
            if self.only_tasks is not None and tc.name not in self.only_tasks:
                continue
            known = tasks_info.get(tc.name)
            if known is not None and known.backbone == tc.backbone and not self._todo(tc, known.dim_raw):
                continue
            torch.set_num_threads(cfg.extract_threads)
            task, fs, info = task_features(tc, cache_root, cfg.progress)
            torch.set_num_threads(cfg.head_threads)
            C = info["dim_raw"]
            tasks_info[tc.name] = TaskInfo(**info, tokens=tc.tokens, widths=tc.resolve_widths(C))
            write_tasks(out, {**read_tasks(out), tc.name: tasks_info[tc.name]})  # other processes' tasks stay
            self._run_task(tc, task, fs, C)

    def _refreshed_done(self) -> set[tuple]:
        """Keys finished by this run or, since it started, by another process sharing ``out_dir``."""
        self.done |= {r.key for r in _reread(read_results, self.out)}
        return self.done

    def _plan(self, tc: TaskConfig, C: int) -> list[tuple[HeadConfig, int]]:
        return [(hc, w) for hc in self.cfg.heads for w in head_widths(hc, tc, C)
                if (self.only_heads is None or hc.name in self.only_heads)
                and (self.only_widths is None or w in self.only_widths or (w == C and "full" in self.only_widths))]

    def _todo(self, tc: TaskConfig, C: int) -> list[tuple[int, HeadConfig, int]]:
        return [(s, hc, w) for s in self.cfg.seeds for hc, w in self._plan(tc, C)
                if (self.only_seeds is None or s in self.only_seeds) and (tc.name, s, hc.name, w) not in self.done]

    def _run_task(self, tc: TaskConfig, task, fs, C: int) -> None:
        cfg = self.cfg
        reduced = reduce_tokens(fs, tc.tokens)
        self._search_data: dict[int, tuple] = {}
        for seed in cfg.seeds:
            todo = [(hc, w) for s, hc, w in self._todo(tc, C) if s == seed]
            splits: dict[int, tuple] = {}
            for hc, w in todo:
                if (tc.name, seed, hc.name, w) in self._refreshed_done():
                    continue
                beta, sel = self._beta(hc, tc, task, fs, reduced, w, C)
                if w not in splits:
                    splits[w] = prepare_split(task, fs, tc, seed, w, reduced=reduced)
                X, y, Xs, ys, pca, (_, te) = splits[w]
                self.console.log(f"[bold]{tc.name}[/] seed {seed}: {hc.name} (n={len(y)}, s={X.shape[1]}, "
                                 f"d={w}{' full' if w == C else ''}, beta={beta:g})")
                res = self._fit_head(hc, X, y, Xs, ys, beta, seed, tc, task, w, grid=fs.grid, test_idx=te)
                rec = self._record(tc, hc, seed, w, C, res, y, ys, pca, beta, sel)
                cert = "" if rec.kind != "convex" else (f"  rel gap {rec.rel_gap:.1e} ({rec.status})"
                                                        if rec.rel_gap is not None else f"  ({rec.status})")
                self.console.log(f"  test acc {rec.test_acc:.4f}  objective {rec.objective:.4g}{cert}  "
                                 f"{rec.time_s:.1f}s")
                if rec.kind == "convex" and not rec.certified:
                    self.console.log(f"  [yellow]not certified: rel gap {rec.rel_gap} > {cfg.certify_tol:g} "
                                     f"(status {rec.status})[/]")
                append_jsonl(self.results_path, rec)
                self.done.add(rec.key)

    def _record(self, tc, hc, seed, w, C, res: HeadResult, y, ys, pca, beta, sel) -> TransferResult:
        extra = dict(res.extra)
        for k in ("beta", "loss"):
            extra.pop(k, None)
        rel_gap = extra.pop("rel_gap", None)
        status = extra.pop("status", None)
        iterations = extra.pop("iterations", None)
        solver = extra.pop("solver", None)
        return TransferResult(
            task=tc.name, backbone=tc.backbone, seed=seed, head=hc.name, kind=hc.kind,
            convex_head=hc.head if hc.kind != "baseline" else None, width=w, full_width=w == C,
            tokens=int(tc.tokens), n_train=len(y), n_test=len(ys),
            pca_explained=float(pca.explained_variance_ratio_.sum()), loss=self.cfg.loss, beta=beta,
            beta_selected=hc.beta_grid is not None or hc.beta_from is not None,
            val_acc=None if sel is None else sel.val_acc[str(sel.beta)],
            train_acc=res.train_acc, test_acc=res.test_acc, objective=res.objective, time_s=res.time_s,
            params=res.params, gap=res.gap, rel_gap=rel_gap, status=status,
            iterations=None if iterations is None else int(iterations), solver=solver,
            certified=None if hc.kind != "convex" else (rel_gap is not None and rel_gap <= self.cfg.certify_tol),
            extra=extra)

    def _beta(self, hc: HeadConfig, tc: TaskConfig, task, fs, reduced, w: int, C: int):
        """``(beta, BetaSelection | None)`` for head ``hc`` at width ``w`` (selected once, then reused)."""
        if hc.beta_from is not None:
            return self._beta(self.by_name[hc.beta_from], tc, task, fs, reduced, w, C)
        if hc.beta_grid is None:
            return (hc.beta if hc.beta is not None else self.cfg.beta), None
        key = (tc.name, hc.name, w)
        if key not in self.selections:  # made by another process sharing out_dir since this run started?
            self.selections.update({s.key: s for s in _reread(read_beta_selections, self.out)})
        if key not in self.selections:
            self.selections[key] = sel = self._select(hc, tc, task, fs, reduced, w)
            append_jsonl(self.out / "beta_selection.jsonl", sel)
        sel = self.selections[key]
        return sel.beta, sel

    def _select(self, hc: HeadConfig, tc: TaskConfig, task, fs, reduced, w: int) -> BetaSelection:
        cfg, seed = self.cfg, self.cfg.seeds[0]
        if w not in self._search_data:
            X, y, *_ = prepare_split(task, fs, tc, seed, w, reduced=reduced)
            tr, va = inner_split(y, cfg.val_fraction, 1000 + seed)
            self._search_data[w] = (X[tr], y[tr], X[va], y[va])
        Xa, ya, Xb, yb = self._search_data[w]
        solves: dict[str, SolveInfo] = {}
        quiet = hc.model_copy(update={"interpret": False})

        done = self.beta_solves.get((tc.name, hc.name, w, seed, cfg.val_fraction), {})

        def score(b: float) -> float:
            if b in done:  # fitted by an earlier, interrupted run of this search
                rec = done[b]
                self.console.log(f"  beta search {tc.name}/{hc.name} d={w}: beta={b:g} val acc {rec.val_acc:.4f} "
                                 f"(from beta_search.jsonl)")
            else:
                res = self._fit_head(quiet, Xa, ya, Xb, yb, b, seed, tc, task, w)
                info = None
                if hc.kind == "convex":
                    rel = res.extra.get("rel_gap")
                    info = SolveInfo(status=res.extra.get("status"), rel_gap=rel,
                                     iterations=res.extra.get("iterations"),
                                     certified=rel is not None and rel <= cfg.certify_tol)
                rec = BetaSolve(task=tc.name, head=hc.name, width=w, seed=seed, val_fraction=cfg.val_fraction,
                                beta=b, val_acc=res.test_acc, solve=info)
                append_jsonl(self.out / "beta_search.jsonl", rec)
                self.console.log(f"  beta search {tc.name}/{hc.name} d={w}: beta={b:g} val acc {res.test_acc:.4f}")
            if rec.solve is not None:
                solves[str(b)] = rec.solve
            return rec.val_acc

        best, scores, extended, at_edge = select_beta(score, hc.beta_grid, cfg.beta_grid_extend)
        if extended:
            self.console.log(f"  beta grid of {hc.name} (d={w}) extended by {extended}")
        if at_edge:
            self.console.log(f"  [yellow]beta={best:g} for {hc.name} (d={w}) is still at the {at_edge} end "
                             f"of its grid after {cfg.beta_grid_extend} extensions[/]")
        return BetaSelection(task=tc.name, head=hc.name, width=w, seed=seed, val_fraction=cfg.val_fraction,
                             initial_grid=list(hc.beta_grid), grid=list(scores),
                             val_acc={str(b): v for b, v in scores.items()}, beta=best, extended=extended,
                             at_edge=at_edge, solves=solves)

    def _fit_head(self, hc: HeadConfig, X, y, Xs, ys, beta, seed, tc, task, w, grid=None,
                  test_idx=None) -> HeadResult:
        cfg, c = self.cfg, len(task.classes)
        if hc.kind == "baseline":
            return fit_baseline(hc.head or hc.name, X, y, Xs, ys, loss=cfg.loss, beta=beta, seed=seed,
                                num_classes=c, **hc.options)
        if hc.kind == "nonconvex":
            return fit_nonconvex_counterpart(hc.head, X, y, Xs, ys, loss=cfg.loss, beta=beta, seed=seed,
                                             head_options=hc.head_options, num_classes=c, **hc.options)
        res, cf = fit_convex_head(hc, X, y, Xs, ys, loss=cfg.loss, beta=beta, seed=seed, num_classes=c,
                                  solver=cfg.solver, tol=cfg.certify_tol)
        if hc.interpret and seed == cfg.seeds[0] and grid is not None:
            from dualattn.transfer.report import token_cluster_maps

            path = self.out / "plots" / f"clusters-{tc.name}-{hc.name.replace(':', '_')}-d{w}.png"
            try:
                images = None if test_idx is None or task.kind != "vision" else np.asarray(task.inputs)[test_idx]
                token_cluster_maps(cf, Xs, ys, tc.tokens, path, task.classes, images)
                res.extra["cluster_plot"] = path.relative_to(self.out).as_posix()
            except (ImportError, NotImplementedError, ValueError, TypeError, AttributeError) as e:
                res.extra["cluster_plot_error"] = str(e)  # head not interpretable (or no dense Z)
        return res
