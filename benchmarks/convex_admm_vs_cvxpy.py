"""ADMM vs FISTA vs CVXPY-Clarabel on the issue-9 small squared-loss problem (thin wrapper).

    python benchmarks/convex_admm_vs_cvxpy.py                 # n=256, s=16, d=6, c=10, beta=0.1, linear
    python benchmarks/convex_admm_vs_cvxpy.py --head gated --n 512

The logic is :func:`dualattn.convex.compare.compare_solvers`; prints a Markdown table and
writes it (plus JSON rows) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dualattn.convex.compare import compare_solvers, markdown_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k, v in (("n", 256), ("s", 16), ("d", 6), ("c", 10), ("seed", 0), ("repeats", 3)):
        p.add_argument(f"--{k}", type=int, default=v)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--head", default="linear")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--solvers", default="admm,fista,cvxpy")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/convex_admm_vs_cvxpy"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = compare_solvers(n=a.n, s=a.s, d=a.d, c=a.c, beta=a.beta, head=a.head, tol=a.tol, seed=a.seed,
                           repeats=a.repeats, solvers=tuple(a.solvers.split(",")))
    table = markdown_table(rows)
    print(table)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text(table + "\n")
    a.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                                      "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
