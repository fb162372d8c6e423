"""Convex-solver benchmark: time to a certified relative gap of 1e-4.

Problem 1 (``attention``): the linear self-attention program of Sahiner et al.
(2022), ``min_Z 1/2 sum_i ||A_i(Z) - y_i||^2 + beta ||Z||_*`` with
``Z in R^{d^2 x dc}`` (head ``"linear"``), on synthetic data
``X (n, s=16, d)``, c = 10 one-hot classes from a random linear-attention teacher,
``beta = beta_frac * beta_max``.  Solvers: our FISTA (``dualattn.convex.fit``)
and CVXPY with Clarabel and SCS.  Every CVXPY run is a separate process with a
wall-clock cap (default 600 s) and an address-space cap (default 4 GiB); a
run that hits either is recorded as "did not finish" (DNF) and larger ``n`` for
that solver and ``d`` are skipped.

Problem 2 (``mlp``): the gated-ReLU MLP (head ``"mlp-gated"`` with s = 1, i.e.
scnn's convex gated-ReLU program, scalar output so both use the group lasso),
our FISTA vs scnn's R-FISTA (``pyscnn``; rows skipped when it is not
importable).  scnn minimises ``||yhat - y||^2 / (2n) + lam sum_j ||u_j||``, i.e.
our objective divided by ``n`` with ``lam = beta / n``; we give it the same
gate vectors (``unitize_data=False``, no bias, float64) and score its solution
with our objective.

"Time to gap 1e-4": for every solver the returned point ``Z`` is scored with
``rel = (P(Z) - D) / P(Z)``, ``D`` the best known dual value (the certificate at
``Z`` or a tight FISTA reference run, whichever is larger), so ``rel`` bounds
the true relative suboptimality.  FISTA stops on its own certificate; CVXPY
solvers run at tight tolerances and are charged their solve time only
(compilation reported separately); scnn is run with tolerances
1e-5, 1e-6, ... and charged the first run that reaches the target.

scnn has no certificate, so the MLP problem has two rows for our FISTA from one
run: ``fista (ours)``, the time until its own duality-gap certificate reaches
1e-4 (its dual point, the scaled gradient, lags the primal: the gap shrinks like
the square root of the primal error), and ``fista (ours) at target``, the time of
its first iterate within 1e-4 of the reference dual, i.e. scored exactly like
scnn.  The summary compares scnn with both.

Usage (``benchmarks/convex_solvers.py`` is a thin script over :func:`main`)::

    dualattn convex bench            # full run (tens of minutes)
    dualattn convex bench --quick    # tiny sizes, seconds
    python -m dualattn.bench.convex --quick

Writes ``<out>/convex_solvers[_quick].csv``, ``.png`` and ``.md`` (``--out``,
default ``benchmarks/results`` under the current directory).  Timings are
wall-clock on the current machine (single thread by default) and noisy on a
shared machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET = 1e-4
FIELDS = ["problem", "n", "s", "d", "c", "gates", "beta", "solver", "status", "time_s", "compile_s",
          "objective", "rel_gap", "iterations", "note"]


# ----------------------------------------------------------------------------- data
def attention_data(n: int, s: int, d: int, c: int, seed: int):
    """Gaussian tokens and labels of a random rank-2 linear-attention teacher (one-hot targets)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, s, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    W1 = torch.randn(2, d, d, generator=g, dtype=torch.float64)
    W2 = torch.randn(2, d, c, generator=g, dtype=torch.float64)
    scores = torch.einsum("nsa,hab,ntb->nhst", X, W1, X)
    logits = (scores @ torch.einsum("ntd,hdc->nhtc", X, W2)).mean(dim=2).sum(dim=1)
    y = logits.argmax(dim=1)
    return X, torch.nn.functional.one_hot(y, c).to(torch.float64)


def mlp_data(n: int, d: int, seed: int):
    """Gaussian inputs ``(n, 1, d)`` and a noisy two-neuron ReLU teacher (scalar targets)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, d, generator=g, dtype=torch.float64)
    W = torch.randn(2, d, generator=g, dtype=torch.float64)
    y = torch.relu(X[:, 0] @ W.T).sum(dim=1) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return X, y[:, None]


# ------------------------------------------------------------------------ scoring
class Scorer:
    """Objective and certified relative gap of any ``Z`` for one problem instance."""

    def __init__(self, head, X, Y, beta: float, dual_ref: float = -math.inf):
        from dualattn.convex.losses import get_loss
        from dualattn.convex.operator import ChunkedOperator

        self.head, self.Y, self.beta = head, Y, beta
        self.loss = get_loss("squared")
        self.op = ChunkedOperator(head, X)
        self.dual_ref = dual_ref

    def __call__(self, Z) -> tuple[float, float]:
        from dualattn.convex.solvers.result import certificate

        cert = certificate(self.head, self.op, self.loss, self.Y, self.beta, Z)
        dual = max(cert["dual"], self.dual_ref)
        return cert["primal"], max(cert["primal"] - dual, 0.0) / max(abs(cert["primal"]), 1e-12)


def run_fista(head, X, Y, beta, *, tol: float, max_time: float, max_iter: int = 200000):
    """Our solver; returns the fit and the wall time of the whole ``fit`` call."""
    from dualattn.convex import fit

    t0 = time.perf_counter()
    f = fit(head, X, Y, beta, loss="squared", tol=tol, max_time=max_time, max_iter=max_iter)
    return f, time.perf_counter() - t0


# ------------------------------------------------------------------- CVXPY child
def _limit_memory(gib: float):
    def setter():
        import resource

        lim = int(gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    return setter


def cvxpy_child(path: str) -> None:
    """Subprocess entry: solve the saved linear-attention program with one CVXPY solver."""
    import cvxpy as cp

    spec = json.loads(Path(path, "spec.json").read_text())
    data = np.load(Path(path, "data.npz"))
    Psi, Y = data["Psi"], data["Y"]
    d, c, beta = spec["d"], spec["c"], spec["beta"]
    Z = cp.Variable((d * d, d * c))
    out = Psi @ cp.reshape(Z, (d**3, c), order="C")
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(out - Y) + beta * cp.normNuc(Z)))
    scs = {"eps_abs": 1e-6, "eps_rel": 1e-6, "max_iters": 10**6}
    opts = {"CLARABEL": {}, "SCS": scs, "SCS-INDIRECT": dict(scs, use_indirect=True)}.get(spec["solver"], {})
    t0 = time.perf_counter()
    prob.solve(solver=spec["solver"].split("-")[0], **opts)
    total = time.perf_counter() - t0
    st = prob.solver_stats
    solve = float(st.solve_time) if st.solve_time is not None else total
    np.save(Path(path, "Z.npy"), np.asarray(Z.value) if Z.value is not None else np.zeros((0,)))
    Path(path, "result.json").write_text(json.dumps(
        {"status": str(prob.status), "solve_s": solve, "compile_s": max(total - solve, 0.0),
         "iterations": int(st.num_iters or 0)}))


def run_cvxpy(feats, Y, d: int, c: int, beta: float, solver: str, *, timeout: float, mem_gib: float):
    """Run :func:`cvxpy_child` in a capped subprocess; returns ``(Z or None, info)``."""
    import torch

    xbar, G = feats["xbar"].numpy(), feats["G"].numpy().reshape(-1, d, d)
    Psi = np.einsum("nkl,na->nkal", G, xbar).reshape(xbar.shape[0], d**3)  # [(k,a,l)] = G[k,l] xbar[a]
    with tempfile.TemporaryDirectory(prefix="cvxbench") as tmp:
        np.savez(Path(tmp, "data.npz"), Psi=Psi, Y=Y.numpy())
        Path(tmp, "spec.json").write_text(json.dumps({"d": d, "c": c, "beta": beta, "solver": solver}))
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "dualattn.bench.convex", "--_cvxpy-child", tmp]
        try:
            proc = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True, env=env,
                                  preexec_fn=_limit_memory(mem_gib))
        except subprocess.TimeoutExpired:
            return None, {"status": "DNF", "note": f"over {timeout:.0f} s"}
        res_path = Path(tmp, "result.json")
        if proc.returncode != 0 or not res_path.exists():
            err = (proc.stderr or "").strip().splitlines()
            oom = any(k in line for line in err for k in ("MemoryError", "Unable to allocate", "bad_alloc", "allocation error"))
            why = f"out of memory (> {mem_gib:g} GiB)" if oom or proc.returncode < 0 else (err[-1][:80] if err else "crashed")
            return None, {"status": "DNF", "note": why}
        info = json.loads(res_path.read_text())
        Z = np.load(Path(tmp, "Z.npy"))
        if Z.size == 0:
            return None, {"status": "DNF", "note": f"solver status {info['status']}"}
        return torch.as_tensor(Z).reshape(1, d * d, d * c), info


# ------------------------------------------------------------------------ scnn
def scnn_available() -> tuple[bool, str]:
    try:
        import scnn  # noqa: F401
        from scnn.optimize import optimize_model  # noqa: F401
    except Exception as err:  # pragma: no cover - depends on the environment
        return False, f"pyscnn not importable ({type(err).__name__}: {err}); install it for the benchmark only with " \
                      "`pip install --no-deps pyscnn linalg-backends opt_einsum`"
    return True, ""


def run_scnn(head, X, Y, beta: float, tol: float):
    """scnn's R-FISTA on the same gated-ReLU program, with as many BLAS threads as torch uses
    for our solver; returns ``(Z in our layout, seconds)``."""
    import torch
    from scnn.metrics import Metrics
    from scnn.models import ConvexGatedReLU
    from scnn.optimize import optimize_model
    from scnn.regularizers import NeuronGL1
    from scnn.solvers import RFISTA

    n = X.shape[0]
    Xn, yn = X[:, 0].numpy(), Y.numpy()
    model = ConvexGatedReLU(head.h.T.numpy().copy(), c=1)
    solver = RFISTA(model, max_iters=10**6, tol=tol)
    metrics = Metrics(objective=False, grad_norm=False, time=False)
    from threadpoolctl import threadpool_limits

    # same thread count as our solver (numpy's BLAS would otherwise use every core)
    with threadpool_limits(limits=torch.get_num_threads()):
        t0 = time.perf_counter()
        cm, _ = optimize_model(model, solver, metrics, Xn, yn, regularizer=NeuronGL1(beta / n),
                               return_convex=True, unitize_data=False, dtype="float64")
        elapsed = time.perf_counter() - t0
    # scnn drops duplicate/all-zero gate patterns and reorders the rest; map back by gate vector
    W = torch.as_tensor(np.asarray(cm.parameters[0]))  # (c=1, p', d)
    Gs = torch.as_tensor(np.asarray(cm.G))  # (d, p')
    Z = torch.zeros(head.variable_shape(), dtype=torch.float64)
    for k in range(Gs.shape[1]):
        match = torch.nonzero((head.h - Gs[:, k]).abs().amax(dim=1) == 0)
        Z[int(match[0])] = W[:, k, :].T
    return Z, elapsed


# ------------------------------------------------------------------ benchmark
def row(**kw) -> dict:
    out = {k: "" for k in FIELDS}
    out.update(kw)
    return out


def bench_attention(cfg, rows: list, console) -> None:
    import torch

    from dualattn.convex import beta_max, get_head

    for d in cfg.dims:
        dnf: set[str] = set()
        for n in cfg.sizes:
            X, Y = attention_data(n, cfg.s, d, cfg.c, cfg.seed)
            head = get_head("linear")
            beta = cfg.beta_frac * beta_max(head, X, Y)
            ref, _ = run_fista(head, X, Y, beta, tol=cfg.ref_tol, max_time=cfg.timeout)
            score = Scorer(head, X, Y, beta, dual_ref=ref.dual_objective)
            base = dict(problem="attention", n=n, s=cfg.s, d=d, c=cfg.c, gates="", beta=f"{beta:.6g}")
            f, secs = run_fista(head, X, Y, beta, tol=TARGET, max_time=cfg.timeout)
            obj, rel = score(f.Z)
            rows.append(row(**base, solver="fista (ours)", status=f.status, time_s=secs, objective=obj,
                            rel_gap=rel, iterations=f.iterations, note=f"solver={f.solver}"))
            console.print(f"attention d={d} n={n}: fista {secs:.2f}s rel={rel:.1e} ({f.status})")
            feats = score.op.full_features()
            for solver in cfg.cvxpy_solvers:
                if solver in dnf:
                    rows.append(row(**base, solver=f"cvxpy-{solver.lower()}", status="skipped",
                                    note="DNF at a smaller n"))
                    continue
                Z, info = run_cvxpy(feats, Y, d, cfg.c, beta, solver, timeout=cfg.timeout, mem_gib=cfg.mem_gib)
                if Z is None:
                    dnf.add(solver)
                    rows.append(row(**base, solver=f"cvxpy-{solver.lower()}", status="DNF", note=info["note"]))
                    console.print(f"attention d={d} n={n}: {solver} DNF ({info['note']})")
                    continue
                obj, rel = score(Z.to(torch.float64))
                status = "optimal" if rel <= TARGET else "inaccurate"
                rows.append(row(**base, solver=f"cvxpy-{solver.lower()}", status=status, time_s=info["solve_s"],
                                compile_s=info["compile_s"], objective=obj, rel_gap=rel,
                                iterations=info["iterations"], note=info["status"]))
                console.print(f"attention d={d} n={n}: {solver} {info['solve_s']:.2f}s "
                              f"(+{info['compile_s']:.1f}s compile) rel={rel:.1e}")


def bench_mlp(cfg, rows: list, console) -> None:
    from dualattn.convex import beta_max, get_head

    ok, why = scnn_available()
    if not ok:
        console.print(f"[yellow]skipping scnn rows: {why}[/yellow]")
    for n in cfg.mlp_sizes:
        X, Y = mlp_data(n, cfg.mlp_d, cfg.seed)
        head = get_head("mlp-gated", num_gates=cfg.gates, seed=cfg.seed)
        beta = cfg.mlp_beta_frac * beta_max(head, X, Y)
        ref, _ = run_fista(head, X, Y, beta, tol=cfg.ref_tol, max_time=cfg.timeout)
        score = Scorer(head, X, Y, beta, dual_ref=ref.dual_objective)
        base = dict(problem="mlp", n=n, s=1, d=cfg.mlp_d, c=1, gates=cfg.gates, beta=f"{beta:.6g}")
        f, secs = run_fista(head, X, Y, beta, tol=TARGET, max_time=cfg.timeout)
        obj, rel = score(f.Z)
        rows.append(row(**base, solver="fista (ours)", status=f.status, time_s=secs, objective=obj, rel_gap=rel,
                        iterations=f.iterations, note=f"solver={f.solver}; stops on its own certificate"))
        console.print(f"mlp n={n}: fista {secs:.2f}s rel={rel:.1e}")
        at = first_at_target(f, secs, score.dual_ref)
        if at is not None:
            it, t_at, obj_at, rel_at = at
            rows.append(row(**base, solver="fista (ours) at target", status="optimal", time_s=t_at, objective=obj_at,
                            rel_gap=rel_at, iterations=it,
                            note="same run: first iterate within the target of the reference dual (no certificate)"))
            console.print(f"mlp n={n}: fista reaches the target at iteration {it}, {t_at:.2f}s")
        if not ok:
            rows.append(row(**base, solver="scnn r-fista", status="skipped", note="pyscnn not importable"))
            continue
        for tol in cfg.scnn_tols:
            Z, secs = run_scnn(head, X, Y, beta, tol)
            obj, rel = score(Z)
            if rel <= TARGET or tol == cfg.scnn_tols[-1]:
                rows.append(row(**base, solver="scnn r-fista", status="optimal" if rel <= TARGET else "inaccurate",
                                time_s=secs, objective=obj, rel_gap=rel, note=f"scnn tol={tol:g}"))
                console.print(f"mlp n={n}: scnn {secs:.2f}s rel={rel:.1e} (tol {tol:g})")
                break


def first_at_target(f, wall_s: float, dual_ref: float):
    """``(iteration, seconds, objective, rel)`` of the first FISTA iterate whose best primal is within
    ``TARGET`` of ``dual_ref`` (a reference dual value), from the run's history; ``seconds`` includes the
    setup outside the iterations (``wall_s - f.time``).  None when no iterate is (history empty)."""
    setup = max(wall_s - float(f.time), 0.0)
    for h in f.history:
        p = float(h["best_primal"])
        rel = max(p - dual_ref, 0.0) / max(abs(p), 1e-12)
        if rel <= TARGET:
            return int(h["iter"]), setup + float(h["time"]), p, rel
    return None


# --------------------------------------------------------------------- report
def summarise(rows: list) -> list[dict]:
    """Speedups of our solver at the relevant sizes, with PASS/FAIL against the targets."""
    out = []
    att = [r for r in rows if r["problem"] == "attention"]
    for d in sorted({r["d"] for r in att}):
        done = [r for r in att if r["d"] == d and r["solver"].startswith("cvxpy") and r["status"] == "optimal"]
        if not done:
            out.append({"comparison": f"attention d={d}: vs fastest CVXPY", "n": "", "speedup": float("nan"),
                        "target": ">= 20x", "result": "n/a (no CVXPY run finished)"})
            continue
        n_big = max(r["n"] for r in done)
        fastest = min((r for r in done if r["n"] == n_big), key=lambda r: r["time_s"])
        ours = next(r for r in att if r["d"] == d and r["n"] == n_big and r["solver"] == "fista (ours)")
        sp = fastest["time_s"] / ours["time_s"]
        ok = sp >= 20 and ours["status"] == "optimal"
        out.append({"comparison": f"attention d={d}: vs {fastest['solver']}", "n": n_big, "speedup": sp,
                    "target": ">= 20x", "result": "PASS" if ok else "FAIL"})
    for r in (r for r in rows if r["problem"] == "mlp" and r["solver"] == "scnn r-fista" and r["status"] != "skipped"):
        for name, what in (("fista (ours)", "certified"), ("fista (ours) at target", "same scoring")):
            ours = next((o for o in rows if o["problem"] == "mlp" and o["n"] == r["n"] and o["solver"] == name), None)
            if ours is None:
                continue
            sp = r["time_s"] / ours["time_s"]
            out.append({"comparison": f"gated-ReLU MLP ({what}): vs scnn R-FISTA", "n": r["n"], "speedup": sp,
                        "target": ">= 1x", "result": "PASS" if sp >= 1 and r["status"] == "optimal"
                        and ours["status"] == "optimal" else "FAIL"})
    return out


def fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else str(v)


def speedup_str(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}x"


def write_outputs(rows: list, summary: list, out: Path, stem: str, cmd: str) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{stem}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    panels = [("attention", d) for d in sorted({r["d"] for r in rows if r["problem"] == "attention"})]
    if any(r["problem"] == "mlp" for r in rows):
        panels.append(("mlp", None))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (prob, d) in zip(axes[0], panels):
        sel = [r for r in rows if r["problem"] == prob and (d is None or r["d"] == d)]
        for solver in dict.fromkeys(r["solver"] for r in sel):
            pts = [(r["n"], r["time_s"]) for r in sel if r["solver"] == solver and r["status"] in ("optimal", "inaccurate")]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=solver)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ns = sorted({r["n"] for r in sel})
        ax.set_xticks(ns, [str(v) for v in ns])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        dnf = sorted({r["solver"] for r in sel if r["status"] == "DNF"})
        if dnf:
            ax.text(0.02, 0.98, "did not finish: " + ", ".join(dnf), transform=ax.transAxes, va="top", fontsize=7)
        ax.set_xlabel("n (samples)")
        ax.set_ylabel(f"time to rel. gap {TARGET:g} [s]")
        ax.set_title(f"linear attention, d={d}" if prob == "attention" else "gated-ReLU MLP (scnn problem)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=120)
    plt.close(fig)
    lines = [f"Command: `{cmd}`", "",
             "| problem | n | d | solver | status | time [s] | compile [s] | objective | rel. gap | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['problem']} | {r['n']} | {r['d']} | {r['solver']} | {r['status']} | "
                     f"{fmt(r['time_s'], '.3g')} | {fmt(r['compile_s'], '.3g')} | {fmt(r['objective'], '.8g')} | "
                     f"{fmt(r['rel_gap'], '.1e')} | {r['note']} |")
    lines += ["", "| comparison | n | speedup | target | result |", "|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['comparison']} | {s['n']} | {speedup_str(s['speedup'])} | {s['target']} | {s['result']} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")


def print_tables(rows: list, summary: list, console) -> None:
    from rich.table import Table

    t = Table(title=f"time to relative gap {TARGET:g}")
    for col in ("problem", "n", "d", "solver", "status", "time [s]", "compile [s]", "objective", "rel. gap", "note"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["problem"], str(r["n"]), str(r["d"]), r["solver"], r["status"], fmt(r["time_s"], ".3g"),
                  fmt(r["compile_s"], ".3g"), fmt(r["objective"], ".8g"), fmt(r["rel_gap"], ".1e"), str(r["note"]))
    console.print(t)
    s = Table(title="speedup of fista (ours)")
    for col in ("comparison", "n", "speedup", "target", "result"):
        s.add_column(col)
    for r in summary:
        style = "green" if r["result"] == "PASS" else ("red" if r["result"] == "FAIL" else "")
        s.add_row(r["comparison"], str(r["n"]), speedup_str(r["speedup"]), r["target"], f"[{style}]{r['result']}" if style else r["result"])
    console.print(s)


DEFAULT_OUT = Path("benchmarks") / "results"


def parse_args(argv=None, *, prog: str | None = None, default_out: Path = DEFAULT_OUT):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (for tests): seconds instead of tens of minutes")
    p.add_argument("--out", type=Path, default=default_out, help=f"output folder (default: {default_out})")
    p.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=None,
                   help="attention sample sizes (default 256,1024,4096; quick: 32,64)")
    p.add_argument("--dims", type=lambda v: [int(x) for x in v.split(",")], default=[8, 16])
    p.add_argument("--s", type=int, default=16)
    p.add_argument("--c", type=int, default=10)
    p.add_argument("--beta-frac", type=float, default=0.1, help="attention: beta = frac * beta_max")
    p.add_argument("--cvxpy-solvers", type=lambda v: [x.upper() for x in v.split(",") if x],
                   default=["CLARABEL", "SCS"], help="CVXPY solvers (SCS-INDIRECT: SCS with its CG linear solver)")
    p.add_argument("--timeout", type=float, default=600.0, help="cap per solver run [s]")
    p.add_argument("--mem-gib", type=float, default=4.0, help="address-space cap of each CVXPY process")
    p.add_argument("--mlp-sizes", type=lambda v: [int(x) for x in v.split(",") if x], default=[1000, 4000, 16000])
    p.add_argument("--mlp-d", type=int, default=32)
    p.add_argument("--gates", type=int, default=64)
    p.add_argument("--mlp-beta-frac", type=float, default=0.01)
    p.add_argument("--scnn-tols", type=lambda v: [float(x) for x in v.split(",")], default=[1e-5, 1e-6, 1e-7, 1e-8, 1e-10])
    p.add_argument("--ref-tol", type=float, default=1e-8, help="FISTA reference run for the dual bound")
    p.add_argument("--skip", choices=["attention", "mlp"], action="append", default=[])
    p.add_argument("--threads", type=int, default=1, help="torch threads for our solver")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--replot", type=Path, default=None, help="rewrite .png/.md from an existing results CSV")
    p.add_argument("--_cvxpy-child", dest="cvxpy_child", default=None, help=argparse.SUPPRESS)
    cfg = p.parse_args(argv)
    if cfg.quick:
        cfg.sizes, cfg.dims, cfg.s, cfg.c = cfg.sizes or [32, 64], [3], 4, 3
        cfg.mlp_sizes, cfg.mlp_d, cfg.gates = [200], 5, 8
        cfg.timeout = min(cfg.timeout, 120.0)
        cfg.scnn_tols = [1e-6, 1e-8, 1e-10]
    cfg.sizes = cfg.sizes or [256, 1024, 4096]
    return cfg


def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV written by :func:`write_outputs`, numbers parsed back."""
    import csv

    def num(v: str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v

    with open(path) as fh:
        return [{k: (num(v) if k in ("n", "s", "d", "c", "time_s", "compile_s", "objective", "rel_gap") and v else v)
                 for k, v in r.items()} for r in csv.DictReader(fh)]


def main(argv=None, *, prog: str = "dualattn convex bench", default_out: Path = DEFAULT_OUT) -> int:
    """Run the benchmark (``argv``: the options above); ``prog`` is recorded as the command in the ``.md``."""
    cfg = parse_args(argv, prog=prog, default_out=default_out)
    if cfg.cvxpy_child:
        cvxpy_child(cfg.cvxpy_child)
        return 0
    if cfg.replot:
        from rich.console import Console

        rows = read_rows(cfg.replot)
        summary = summarise(rows)
        cmd = (cfg.replot.with_suffix(".md").read_text().splitlines() or [""])[0]
        cmd = cmd.removeprefix("Command: `").removesuffix("`") or prog
        write_outputs(rows, summary, cfg.replot.parent, cfg.replot.stem, cmd)
        print_tables(rows, summary, Console(width=150))
        return 0
    import torch
    from rich.console import Console

    torch.set_num_threads(cfg.threads)
    console = Console(width=max(Console().width, 150))
    rows: list[dict] = []
    cmd = f"{prog} " + " ".join(sys.argv[1:] if argv is None else argv)
    if "attention" not in cfg.skip:
        bench_attention(cfg, rows, console)
    if "mlp" not in cfg.skip:
        bench_mlp(cfg, rows, console)
    summary = summarise(rows)
    stem = "convex_solvers_quick" if cfg.quick else "convex_solvers"
    write_outputs(rows, summary, cfg.out, stem, cmd.strip())
    print_tables(rows, summary, console)
    console.print(f"wrote {cfg.out / stem}.csv/.png/.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m dualattn.bench.convex"))
