"""Side-by-side timing of the convex solvers on one small squared-loss problem (issue 9 target).

Problem: ``X ~ randn(n, s, d) / sqrt(d)``, ``Y ~ randn(n, c)``, squared loss, fixed ``beta``.
Every solver gets the same data and is scored with OUR certificate (objective, certified
relative gap); ADMM and FISTA run ``repeats`` times (median wall time, the whole ``fit`` call
including feature/statistics set-up), CVXPY once (solve time and compile time reported apart;
the speed-up is against the solve time only, the conservative choice).
"""

from __future__ import annotations

import resource
import statistics
import time

import torch

from dualattn.convex.api import fit


def small_problem(n: int = 256, s: int = 16, d: int = 6, c: int = 10, seed: int = 0):
    """``X (n, s, d) ~ N(0, 1/d)``, ``Y (n, c) ~ N(0, 1)`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, s, d, generator=g, dtype=torch.float64) / d**0.5
    Y = torch.randn(n, c, generator=g, dtype=torch.float64)
    return X, Y


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def compare_solvers(
    *, n: int = 256, s: int = 16, d: int = 6, c: int = 10, beta: float = 0.1, head: str = "linear",
    head_options: dict | None = None, tol: float = 1e-4, seed: int = 0, repeats: int = 3,
    solvers: tuple[str, ...] = ("admm", "fista", "cvxpy"), cvxpy_solver: str = "CLARABEL",
) -> list[dict]:
    """One row per solver: ``solver, status, time_s, compile_s, iterations, objective, rel_gap,
    obj_diff_vs_cvxpy, speedup_vs_cvxpy`` (last two filled when CVXPY ran)."""
    X, Y = small_problem(n, s, d, c, seed)
    rows = []
    for solver in solvers:
        opts = dict(loss="squared", tol=tol, head_options=head_options)
        if solver == "cvxpy":
            rss0 = _peak_rss_gib()
            t0 = time.perf_counter()
            f = fit(head, X, Y, beta, solver="cvxpy", cvxpy_solver=cvxpy_solver, cvxpy_max_gb=None, **opts)
            total = time.perf_counter() - t0
            rows.append({"solver": f"cvxpy-{cvxpy_solver.lower()}", "status": f.status, "time_s": f.time,
                         "compile_s": total - f.time, "iterations": f.iterations, "objective": f.objective,
                         "rel_gap": f.rel_gap, "peak_rss_gib": _peak_rss_gib(), "rss_before_gib": rss0,
                         "estimated_memory_gib": f.info.get("estimated_memory_gb")})
            continue
        times, f = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            f = fit(head, X, Y, beta, solver=solver, max_iter=100000, **opts)
            times.append(time.perf_counter() - t0)
        rows.append({"solver": solver, "status": f.status, "time_s": statistics.median(times), "compile_s": None,
                     "iterations": f.iterations, "objective": f.objective, "rel_gap": f.rel_gap})
    ref = next((r for r in rows if r["solver"].startswith("cvxpy")), None)
    for r in rows:
        if ref is not None:
            r["obj_diff_vs_cvxpy"] = (r["objective"] - ref["objective"]) / abs(ref["objective"])
            r["speedup_vs_cvxpy"] = ref["time_s"] / r["time_s"]
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows of :func:`compare_solvers` as a Markdown table."""
    head = "| solver | status | time [s] | compile [s] | iterations | objective | certified rel. gap | " \
           "obj. vs CVXPY | speed-up vs CVXPY solve |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        comp = "" if r.get("compile_s") is None else f"{r['compile_s']:.2f}"
        diff = "" if "obj_diff_vs_cvxpy" not in r else f"{r['obj_diff_vs_cvxpy']:+.1e}"
        sp = "" if "speedup_vs_cvxpy" not in r else f"{r['speedup_vs_cvxpy']:.1f}x"
        lines.append(f"| {r['solver']} | {r['status']} | {r['time_s']:.3f} | {comp} | {r['iterations']} | "
                     f"{r['objective']:.8f} | {r['rel_gap']:.1e} | {diff} | {sp} |")
    return "\n".join(lines)
