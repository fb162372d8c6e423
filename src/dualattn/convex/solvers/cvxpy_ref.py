"""CVXPY reference solver (Clarabel by default) for small convex-head programs.

Builds ``min_z F(M z) + beta sum_g ||Z_g||_*`` from the head's ``cvxpy_forward``
(a dense design matrix by default) and ``cvxpy_penalty``, then certifies the
returned point with the same duality gap as FISTA: ``status`` is ``"optimal"``
only when OUR certified relative gap is ``<= tol`` (CVXPY's own status is kept
in ``info["cvxpy_status"]``), otherwise ``"inaccurate"``.

Interior-point solvers abort the whole process (not a Python exception) when an
allocation fails, so :func:`estimate_cvxpy_size` sizes the conic program first
and :func:`solve_cvxpy` refuses programs above ``max_gb``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from dualattn.convex.losses import Loss
from dualattn.convex.operator import ChunkedOperator
from dualattn.convex.solvers.result import SolveResult, certificate

#: CVXPY solvers that are first-order (no dense KKT / PSD-cone Hessian blocks)
FIRST_ORDER = ("SCS", "OSQP", "PDLP")


def estimate_cvxpy_size(op: ChunkedOperator, loss: Loss, solver: str = "CLARABEL") -> dict:
    """Size of the conic program CVXPY builds for this head, loss and data (before building it).

    With ``N = n c`` outputs, ``D = numel(Z)`` and per block ``Z_g (p x q)`` the nuclear
    norm's PSD cone of order ``p + q`` (``m_g = (p+q)(p+q+1)/2`` entries; a second-order
    cone of size ``pq + 1`` when ``min(p, q) = 1``):

    * variables   ``D + N + sum_g m_g`` (+ ``3N`` exponential-cone slots for cross-entropy),
    * constraints ``N + sum_g m_g`` rows (+ ``3N``),
    * nonzeros    ``N D`` (dense design matrix) ``+ sum_g 2 p q``,
    * memory      ``48 B x nnz + 56 B x sum_g m_g^2 + 64 MiB`` for interior-point solvers (CVXPY's
      canonicalised copies of the design matrix, the dense ``m_g x m_g`` PSD scaling blocks of the
      KKT system and their factor), ``48 B x nnz + 64 MiB`` for first-order solvers (:data:`FIRST_ORDER`).

    The memory constants are fitted to the peak-RSS rise of CVXPY + Clarabel on four linear-head
    problems (0.07-1.3 GiB, within ~30 %; see ``docs/convex-heads.md``): an estimate, not a bound.
    """
    head = op.head
    P, p, q = head.variable_shape()
    N, D = op.n * op.c, P * p * q
    if min(p, q) == 1:
        cone = P * (p * q + 1)
        dense_blocks = 0
    else:
        m = (p + q) * (p + q + 1) // 2
        cone = P * m
        dense_blocks = P * m * m
    extra = 3 * N if loss.name == "cross_entropy" else 0
    nnz = N * D + 2 * D
    first_order = solver.upper() in FIRST_ORDER
    mem = 48.0 * nnz + (0.0 if first_order else 56.0 * dense_blocks) + 64 * 2**20
    return {
        "variables": D + N + cone + extra, "constraints": N + cone + extra, "nonzeros": nnz,
        "memory_gb": mem / 2**30, "psd_order": 0 if min(p, q) == 1 else p + q, "blocks": P,
    }


def solve_cvxpy(
    op: ChunkedOperator,
    loss: Loss,
    Y: Tensor,
    beta: float,
    *,
    solver: str = "CLARABEL",
    tol: float = 1e-4,
    max_gb: float | None = 2.0,
    verbose: bool = False,
    **solver_options,
) -> SolveResult:
    """Solve the head's program with CVXPY; ``solver`` is any installed CVXPY conic solver.

    Raises ``ValueError`` (before building anything) when :func:`estimate_cvxpy_size` says the
    program needs more than ``max_gb`` GiB; pass ``max_gb=None`` (``fit(..., cvxpy_max_gb=None)``)
    to try anyway.
    """
    import cvxpy as cp

    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol}")
    if loss.name not in ("squared", "cross_entropy"):
        raise ValueError(f"solve_cvxpy: unsupported loss {loss.name!r}")
    head = op.head
    size = estimate_cvxpy_size(op, loss, solver)
    if max_gb is not None and size["memory_gb"] > max_gb:
        faster = "solver='admm' or solver='fista'" if loss.name == "squared" else "solver='fista'"
        raise ValueError(
            f"solver='cvxpy' ({solver}) would need about {size['memory_gb']:.1f} GiB for this problem "
            f"(n*c={op.n * op.c} outputs, {size['variables']} variables, {size['nonzeros']:.3g} nonzeros, "
            f"{size['blocks']} PSD cone(s) of order {size['psd_order']}), above cvxpy_max_gb={max_gb}; "
            f"use {faster} (same program, certified gap), or pass cvxpy_max_gb=None to try anyway "
            f"(an allocation failure inside the solver aborts the whole process)")
    shape = head.variable_shape()
    numel = int(np.prod(shape))
    feats = op.full_features()
    z = cp.Variable(numel)
    out = head.cvxpy_forward(z, feats)
    Yn = Y.detach().cpu().numpy()
    if loss.name == "squared":
        data = 0.5 * cp.sum_squares(out - Yn)
    else:
        onehot = np.eye(op.c)[Yn]
        data = cp.sum(cp.log_sum_exp(out, axis=1)) - cp.sum(cp.multiply(onehot, out))
    prob = cp.Problem(cp.Minimize(data + beta * head.cvxpy_penalty(z)))
    t0 = time.perf_counter()
    prob.solve(solver=solver, verbose=verbose, **solver_options)
    elapsed = time.perf_counter() - t0
    if z.value is None:
        raise RuntimeError(f"CVXPY solver {solver} failed: status {prob.status}")
    Z = torch.as_tensor(np.asarray(z.value), dtype=op.dtype, device=op.device).reshape(shape)
    cert = certificate(head, op, loss, Y, beta, Z)
    stats = prob.solver_stats
    return SolveResult(
        Z=Z, objective=cert["primal"], dual_objective=cert["dual"], gap=cert["gap"],
        rel_gap=cert["rel_gap"], iterations=int(stats.num_iters or 0), time=elapsed,
        status="optimal" if cert["rel_gap"] <= tol else "inaccurate", solver=f"cvxpy-{solver.lower()}",
        history=[],
        info={"cvxpy_value": float(prob.value), "cvxpy_status": str(prob.status), "setup_time": stats.setup_time,
              "estimated_memory_gb": size["memory_gb"]},
    )
