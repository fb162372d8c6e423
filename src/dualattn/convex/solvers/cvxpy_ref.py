"""CVXPY reference solver (Clarabel by default) for small convex-head programs.

Builds ``min_z F(M z) + beta sum_g ||Z_g||_*`` from the head's ``cvxpy_forward``
(a dense design matrix by default) and ``cvxpy_penalty``, then certifies the
returned point with the same duality gap as FISTA.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from dualattn.convex.losses import Loss
from dualattn.convex.operator import ChunkedOperator
from dualattn.convex.solvers.result import SolveResult, certificate


def solve_cvxpy(
    op: ChunkedOperator,
    loss: Loss,
    Y: Tensor,
    beta: float,
    *,
    solver: str = "CLARABEL",
    verbose: bool = False,
    **solver_options,
) -> SolveResult:
    """Solve the head's program with CVXPY; ``solver`` is any installed CVXPY conic solver."""
    import cvxpy as cp

    head = op.head
    shape = head.variable_shape()
    numel = int(np.prod(shape))
    feats = op.full_features()
    z = cp.Variable(numel)
    out = head.cvxpy_forward(z, feats)
    Yn = Y.detach().cpu().numpy()
    if loss.name == "squared":
        data = 0.5 * cp.sum_squares(out - Yn)
    elif loss.name == "cross_entropy":
        onehot = np.eye(op.c)[Yn]
        data = cp.sum(cp.log_sum_exp(out, axis=1)) - cp.sum(cp.multiply(onehot, out))
    else:
        raise ValueError(f"solve_cvxpy: unsupported loss {loss.name!r}")
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
        status=str(prob.status), solver=f"cvxpy-{solver.lower()}", history=[],
        info={"cvxpy_value": float(prob.value), "setup_time": stats.setup_time},
    )
