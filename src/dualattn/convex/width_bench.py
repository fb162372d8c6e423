"""Width sweep of the convex solvers: time to a certified relative gap vs token width ``d``.

Problem (linear self-attention head, the one with the ``d^2 x dc`` variable):
``X ~ randn(n, s, d) / sqrt(d)``; labels from a random linear teacher on the mean token
(cross-entropy), one-hot for the squared loss (``targets="randn"``: ``Y ~ randn(n, c)``); ``beta = beta_frac * beta_max``
with ``beta_max = ||A^*(grad F(0))||_2`` (Lanczos estimate).  Every case runs in a fresh
process (so ``peak_rss_mib`` is that solve's own peak resident memory) with
``torch.set_num_threads(threads)`` and a time cap; rows record whether the solve was
certified (``status == "optimal"``), its relative gap, time, rank and peak memory.
"""

from __future__ import annotations

import csv
import multiprocessing as mp
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

#: dense FISTA is only run where its Z (8 d^3 c bytes) and one SVD per iteration stay small
FISTA_MAX_D = 64


@dataclass
class WidthCase:
    d: int
    n: int
    s: int
    c: int
    loss: str
    solver: str
    tol: float = 1e-3
    beta_frac: float = 0.1
    max_time: float = 180.0
    threads: int = 2
    seed: int = 0
    #: squared-loss targets: "teacher" (one-hot teacher classes, as in benchmarks/convex_solvers.py) or "randn"
    targets: str = "teacher"


def make_problem(case: WidthCase) -> tuple[torch.Tensor, torch.Tensor]:
    """``X (n, s, d)`` and targets for ``case`` (deterministic in ``case.seed``)."""
    g = torch.Generator().manual_seed(case.seed)
    X = torch.randn(case.n, case.s, case.d, generator=g, dtype=torch.float64) / case.d**0.5
    if case.loss == "squared" and case.targets == "randn":
        return X, torch.randn(case.n, case.c, generator=g, dtype=torch.float64)
    W = torch.randn(case.d, case.c, generator=g, dtype=torch.float64)
    labels = (X.mean(dim=1) @ W).argmax(dim=1)
    if case.loss == "squared":
        return X, torch.nn.functional.one_hot(labels, case.c).to(torch.float64)
    return X, labels


def _beta_max(X, y, loss, c) -> float:
    from dualattn.convex.heads import get_head
    from dualattn.convex.losses import get_loss
    from dualattn.convex.solvers.factorised import FactoredOperator

    lossf = get_loss(loss)
    Y, c = lossf.targets(y, X.shape[0], c if loss != "squared" else None)
    head = get_head("linear").setup(X.shape[2], c)
    op = FactoredOperator(head, X)
    _, lam = lossf.value_grad(torch.zeros(X.shape[0], c, dtype=torch.float64), Y)
    return float(op.adjoint_operator(lam).top_pairs(30)[0].max())


def run_case(case: WidthCase) -> dict:
    """Solve one case in this process; returns a result row."""
    from dualattn.convex import fit

    torch.set_num_threads(case.threads)
    X, y = make_problem(case)
    nc = case.c if case.loss != "squared" else None
    beta = case.beta_frac * _beta_max(X, y, case.loss, case.c)
    t0 = time.perf_counter()
    f = fit("linear", X, y, beta, loss=case.loss, solver=case.solver, tol=case.tol, num_classes=nc,
            max_time=case.max_time, max_iter=10**6)
    wall = time.perf_counter() - t0
    rank = f.info.get("rank")
    last = f.history[-1] if f.history else {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return asdict(case) | {"beta": beta, "status": f.status, "certified": f.status == "optimal",
                           "rel_gap": f.rel_gap, "objective": f.objective, "time_s": wall,
                           "iterations": f.iterations, "rank": rank, "peak_rss_mib": peak,
                           "certificate": f.info.get("certificate", "deterministic"),
                           "est_rel_gap": last.get("est_rel_gap", f.rel_gap), "evals": f.info.get("evals")}


def _child(case: WidthCase, q) -> None:
    try:
        q.put(run_case(case))
    except Exception as err:  # report, do not hang the sweep
        q.put(asdict(case) | {"status": f"error: {type(err).__name__}: {err}", "certified": False})


def run_isolated(case: WidthCase) -> dict:
    """:func:`run_case` in a fresh spawned process (own peak memory); errors become rows."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(case, q))
    p.start()
    row = q.get()
    p.join()
    return row


def default_cases(quick: bool = False) -> list[WidthCase]:
    """The issue's targets (d=64: n=2000, s=8, c=10, both losses; d=384: n=1000, s=10, c=10 and 100,
    cross-entropy) and the sweep d = 8 ... 128 (n=1000, s=10, c=10, cross-entropy) with time caps
    (the whole run takes about 25-35 minutes on 2 cores)."""
    cases = [WidthCase(64, 2000, 8, 10, "squared", "factorised", max_time=170, targets="randn"),
             WidthCase(64, 2000, 8, 10, "squared", "factorised", max_time=170),
             WidthCase(64, 2000, 8, 10, "cross_entropy", "factorised", max_time=170),
             WidthCase(384, 1000, 10, 10, "cross_entropy", "factorised", max_time=600),
             WidthCase(384, 1000, 10, 100, "cross_entropy", "factorised", max_time=600)]
    for d in (8, 16, 32):
        for solver in ("fista", "factorised"):
            cases.append(WidthCase(d, 1000, 10, 10, "cross_entropy", solver, max_time=60))
    cases.append(WidthCase(128, 1000, 10, 10, "cross_entropy", "factorised", max_time=300))
    if quick:
        cases = [WidthCase(d, 200, 6, 3, "cross_entropy", s, max_time=20) for d in (4, 8) for s in ("fista", "factorised")]
    return cases


def run_sweep(cases: list[WidthCase], out_dir: str | Path, *, name: str = "convex_width",
              progress: bool = True) -> list[dict]:
    """Run every case isolated, rewrite ``out_dir/<name>.csv`` after each, then plot ``<name>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    rows: list[dict] = []
    for k, case in enumerate(cases):
        row = run_isolated(case)
        rows.append(row)
        if progress:
            print(f"[{k + 1}/{len(cases)}] d={case.d} c={case.c} {case.loss} {case.solver}: {row.get('status')} "
                  f"rel_gap={row.get('rel_gap', float('nan')):.2e} time={row.get('time_s', float('nan')):.1f}s "
                  f"rank={row.get('rank')} peak={row.get('peak_rss_mib', float('nan')):.0f} MiB", flush=True)
        keys = sorted({key for r in rows for key in r})
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    plot_width(rows, out / f"{name}.png")
    return rows


def plot_width(rows: list[dict], path: str | Path) -> None:
    """Time to certificate vs ``d`` per solver (hollow markers: not certified within the cap)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (solver, loss, c), marker in zip(sorted({(r["solver"], r["loss"], r["c"]) for r in rows if "time_s" in r}),
                                         "osD^vx"):
        sel = sorted((r for r in rows if "time_s" in r and (r["solver"], r["loss"], r["c"]) == (solver, loss, c)),
                     key=lambda r: r["d"])
        ds = [r["d"] for r in sel]
        ts = [r["time_s"] for r in sel]
        line, = ax.plot(ds, ts, marker=marker, ls="-", label=f"{solver} {loss} c={c}", mfc="none")
        cert = [(r["d"], r["time_s"]) for r in sel if r["certified"]]
        if cert:
            ax.plot(*zip(*cert), marker=marker, ls="none", color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("token width d")
    ax.set_ylabel("time (s): to certified gap (filled) or cap (hollow)")
    ax.set_title("linear head, tol 1e-3 (d=64: n=2000, s=8; else n=1000, s=10)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["WidthCase", "default_cases", "make_problem", "plot_width", "run_case", "run_isolated", "run_sweep"]
