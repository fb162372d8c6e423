"""Accelerated proximal gradient (FISTA) with backtracking, adaptive restart and a gap stop.

Minimises ``P(Z) = F(A Z) + beta R(Z)`` using only the head protocol
(``apply``/``adjoint`` through a :class:`~dualattn.convex.operator.ChunkedOperator`,
``prox``, ``penalty``, ``dual_norm``).  Iteration ``k`` (Beck & Teboulle 2009)::

    G      = A^* grad F(A Y_k)
    Z_k+1  = prox_{(beta/L) R}(Y_k - G / L)       L doubled until
             F(A Z_k+1) <= F(A Y_k) + <G, Z_k+1 - Y_k> + L/2 ||Z_k+1 - Y_k||^2
    t_k+1  = (1 + sqrt(1 + 4 t_k^2)) / 2,   Y_k+1 = Z_k+1 + (t_k - 1)/t_k+1 (Z_k+1 - Z_k)

with ``L`` shrunk by ``shrink`` before each step, and the gradient restart of
O'Donoghue & Candès (2015): if ``<Y_k - Z_k+1, Z_k+1 - Z_k> > 0`` then ``t = 1``.
``A Y`` is formed from the stored ``A Z`` (linearity), so each iteration costs
one adjoint and one forward per line-search trial.

Certificate: every gradient ``lam = grad F(A Y_k)`` is scaled into the dual
feasible set ``{R°(A^* lam) <= beta}``, so ``best primal - best dual`` is a
valid upper bound on ``P(Z_best) - P*``.  The loop stops when
``gap / max(|P|, 1e-12) <= tol``, or at ``max_iter`` / ``max_time``.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dualattn.convex.losses import Loss
from dualattn.convex.operator import ChunkedOperator
from dualattn.convex.solvers.result import SolveResult, dual_point_value, relative_gap


def fista(
    op: ChunkedOperator,
    loss: Loss,
    Y: Tensor,
    beta: float,
    *,
    Z0: Tensor | None = None,
    tol: float = 1e-4,
    max_iter: int = 20000,
    max_time: float | None = None,
    L0: float | None = None,
    shrink: float = 0.9,
    restart: bool = True,
    verbose: bool = False,
    callback=None,
) -> SolveResult:
    """Solve ``min_Z F(A Z) + beta R(Z)`` to relative duality gap ``tol`` (see module docstring)."""
    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    head = op.head
    shape = head.variable_shape()
    t_start = time.perf_counter()
    if Z0 is None:
        Z = torch.zeros(shape, dtype=op.dtype, device=op.device)
    else:
        if tuple(Z0.shape) != tuple(shape):
            raise ValueError(f"Z0 must have shape {shape}, got {tuple(Z0.shape)}")
        Z = Z0.to(dtype=op.dtype, device=op.device).clone()
    if L0 is None:
        L = max(loss.smoothness * op.norm_estimate(iters=3), 1e-12)
    else:
        L = float(L0)

    AZ = op.forward(Z)
    fZ = float(loss.value(AZ, Y))
    best_primal = fZ + beta * float(head.penalty(Z))
    best_Z = Z
    best_dual = -math.inf
    best_lam = None
    Yk, AY = Z, AZ
    t = 1.0
    history: list[dict] = []
    status = "max_iter"
    restarts = 0
    gap = rel = math.inf
    # line-search slack for rounding in F (matters in float32): 100 eps |F|
    slack = 100.0 * torch.finfo(op.dtype).eps
    bar = tqdm(total=max_iter, disable=not verbose, desc="fista", leave=False)
    it = 0
    for it in range(1, max_iter + 1):
        fY, lam = loss.value_grad(AY, Y)
        fY = float(fY)
        Gr = op.adjoint(lam)
        dual, _ = dual_point_value(head, loss, Y, beta, lam, Gr)
        if dual > best_dual:
            best_dual, best_lam = dual, lam
        # backtracking line search on L
        L = L * shrink
        while True:
            Zn, Rn = head.prox(Yk - Gr / L, beta / L, return_penalty=True)
            D = Zn - Yk
            AZn = op.forward(Zn)
            fZn = float(loss.value(AZn, Y))
            quad = fY + float((Gr * D).sum()) + 0.5 * L * float((D * D).sum())
            if fZn <= quad + slack * max(abs(fY), 1.0):
                break
            L *= 2.0
        primal = fZn + beta * float(Rn)
        if primal < best_primal:
            best_primal, best_Z = primal, Zn
        gap = max(best_primal - best_dual, 0.0)
        rel = relative_gap(gap, best_primal)
        # momentum with adaptive (gradient) restart
        step = Zn - Z
        if restart and float(((Yk - Zn) * step).sum()) > 0.0:
            t = 1.0
            restarts += 1
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        w = (t - 1.0) / t_next
        Yk = Zn + w * step
        AY = AZn + w * (AZn - AZ)
        Z, AZ, t = Zn, AZn, t_next
        elapsed = time.perf_counter() - t_start
        history.append(
            {"iter": it, "time": elapsed, "primal": primal, "best_primal": best_primal,
             "dual": best_dual, "gap": gap, "rel_gap": rel, "L": L, "restarts": restarts}
        )
        bar.update(1)
        if verbose and it % 10 == 0:
            bar.set_postfix(obj=f"{best_primal:.6g}", rel_gap=f"{rel:.2e}")
        if callback is not None:
            callback(history[-1])
        if rel <= tol:
            status = "optimal"
            break
        if max_time is not None and elapsed >= max_time:
            status = "max_time"
            break
    bar.close()
    return SolveResult(
        Z=best_Z, objective=best_primal, dual_objective=best_dual, gap=gap, rel_gap=rel,
        iterations=it, time=time.perf_counter() - t_start, status=status, solver="fista",
        history=history, info={"L": L, "restarts": restarts}, lam=best_lam,
    )
