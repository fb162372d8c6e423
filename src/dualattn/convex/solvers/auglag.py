"""Augmented Lagrangian for cone-constrained heads (``head.constraints(Z, feats) >= 0``).

Solves ``min_Z F(A Z) + beta R(Z)  s.t.  G(Z) >= 0`` (``G`` linear, e.g. the ReLU
cone constraints of ``mlp-relu-cone``) as scnn does for ReLU MLPs: for fixed
multipliers ``lam >= 0`` and penalty ``rho`` the inner problem

    min_Z F(A Z) + rho/2 ||(lam/rho - G Z)_+||^2 + beta R(Z)

is solved by FISTA (backtracking, restart; at most ``inner_iters`` steps or until the
gradient-mapping norm ``L ||Z+ - Y|| <= inner_tol max(1, ||grad||)``, warm started),
then ``lam <- (lam - rho G Z)_+`` and ``rho`` doubles when the violation did not
drop by 4x.

Certificate: for any ``lam >= 0`` and ``mu`` with ``R°(A^* mu - G^* lam) <= beta``,
``-F*(mu)`` is a lower bound on the constrained optimum; we use
``mu = theta grad F(A Z)``, ``theta lam`` with ``theta <= beta / R°(A^* grad F - G^* lam)``.
The multipliers are updated (``lam <- (lam - rho G Z)_+``) before the dual
point is formed, which makes it tight at an inner optimum.  ``P`` is evaluated
at a feasible point: heads with ``repair(Z, op)`` (``mlp-relu-cone``) return a
feasible ``Z'`` with the same outputs, so ``gap = P(Z') - best dual`` is a valid
bound and the solver stops on ``rel_gap <= tol`` and returns the best feasible
``Z'``; without ``repair`` it also requires the relative violation
``sum (-G Z)_+ / sum |G Z| <= feas_tol``.  The violation of the AL iterate is
reported in ``history`` / ``info``.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dualattn.convex.losses import Loss
from dualattn.convex.operator import ChunkedOperator
from dualattn.convex.solvers.result import SolveResult, relative_gap


class _Constraints:
    """``G`` and ``G^*`` of ``op.head`` chunk by chunk."""

    def __init__(self, op: ChunkedOperator) -> None:
        self.op = op
        self.head = op.head

    def forward(self, Z: Tensor) -> list[Tensor]:
        return [self.head.constraints(Z, f) for _, _, f in self.op.chunks()]

    def adjoint(self, L: list[Tensor]) -> Tensor:
        out = None
        for Lk, (_, _, f) in zip(L, self.op.chunks()):
            g = self.head.constraints_adjoint(Lk, f)
            out = g if out is None else out + g
        return out


def augmented_lagrangian(
    op: ChunkedOperator,
    loss: Loss,
    Y: Tensor,
    beta: float,
    *,
    Z0: Tensor | None = None,
    tol: float = 1e-4,
    feas_tol: float = 1e-4,
    rho: float = 1.0,
    max_outer: int = 60,
    inner_iters: int = 300,
    inner_tol: float = 1e-6,
    max_time: float | None = None,
    verbose: bool = False,
) -> SolveResult:
    """Solve the constrained head program (see module docstring)."""
    head = op.head
    if not hasattr(head, "constraints"):
        raise TypeError(f"solver 'auglag' needs a head with cone constraints (e.g. 'mlp-relu-cone'), got {head.name!r}")
    if not (tol > 0 and feas_tol > 0 and rho > 0):
        raise ValueError(f"tol, feas_tol and rho must be > 0, got {tol}, {feas_tol}, {rho}")
    G = _Constraints(op)
    shape = head.variable_shape()
    Z = torch.zeros(shape, dtype=op.dtype, device=op.device) if Z0 is None else Z0.to(op.dtype).clone()
    lam = [torch.zeros_like(g) for g in G.forward(Z)]
    L = max(loss.smoothness * op.norm_estimate(iters=3), 1e-12)
    t0 = time.perf_counter()
    history: list[dict] = []
    best_dual, prev_viol = -math.inf, math.inf
    best_primal, best_Z = math.inf, Z
    can_repair = hasattr(head, "repair")
    rho_max = 1e4 * rho
    status, it_total = "max_iter", 0
    bar = tqdm(total=max_outer, disable=not verbose, desc="auglag", leave=False)

    def smooth(Zc):
        AZ = op.forward(Zc)
        f, mu = loss.value_grad(AZ, Y)
        GZ = G.forward(Zc)
        R = [torch.clamp(lk / rho - gk, min=0) for lk, gk in zip(lam, GZ)]
        val = float(f) + 0.5 * rho * sum(float((r * r).sum()) for r in R)
        return val, op.adjoint(mu) - rho * G.adjoint(R)

    for outer in range(1, max_outer + 1):
        # ---- inner FISTA on the augmented Lagrangian
        Yk, t, Zp = Z, 1.0, Z
        for _ in range(inner_iters):
            fY, gY = smooth(Yk)
            L *= 0.9
            while True:
                Zn = head.prox(Yk - gY / L, beta / L)
                D = Zn - Yk
                fZn, _ = smooth(Zn)
                if fZn <= fY + float((gY * D).sum()) + 0.5 * L * float((D * D).sum()) + 1e-12 * max(abs(fY), 1):
                    break
                L *= 2.0
            it_total += 1
            step = Zn - Zp
            if float(((Yk - Zn) * step).sum()) > 0:
                t = 1.0
            t_next = 0.5 * (1 + math.sqrt(1 + 4 * t * t))
            Yk = Zn + (t - 1) / t_next * step
            Zp, t = Zn, t_next
            if L * float(D.norm()) <= inner_tol * max(1.0, float(gY.norm())):
                break
        Z = Zp
        # ---- certificate and feasibility
        AZ = op.forward(Z)
        f, mu = loss.value_grad(AZ, Y)
        GZ = G.forward(Z)
        Zf = head.repair(Z, op) if can_repair else Z
        primal = float(f) + beta * float(head.penalty(Zf))  # A Zf = A Z
        if primal < best_primal:
            best_primal, best_Z = primal, Zf
        # first-order multiplier update; these multipliers make the inner optimality
        # condition read  -(A^* mu - G^* lam) in beta dR(Z), so they give a tight dual point
        lam = [torch.clamp(lk - rho * gk, min=0) for lk, gk in zip(lam, GZ)]
        V = op.adjoint(mu) - G.adjoint(lam)
        rho_dual = float(head.dual_norm(V))
        dval, _ = loss.dual_value(mu, Y, math.inf if rho_dual == 0 else beta / rho_dual)
        best_dual = max(best_dual, float(dval))
        neg = sum(float(torch.clamp(-g, min=0).sum()) for g in GZ)
        tot = sum(float(g.abs().sum()) for g in GZ)
        viol = neg / max(tot, 1e-300)
        gap = max(best_primal - best_dual, 0.0)
        rel = relative_gap(gap, best_primal)
        history.append({"outer": outer, "iters": it_total, "time": time.perf_counter() - t0, "primal": primal,
                        "dual": best_dual, "gap": gap, "rel_gap": rel, "violation": viol, "rho": rho})
        bar.update(1)
        bar.set_postfix(obj=f"{primal:.6g}", rel_gap=f"{rel:.1e}", viol=f"{viol:.1e}")
        if rel <= tol and (can_repair or viol <= feas_tol):
            status = "optimal"
            break
        if max_time is not None and time.perf_counter() - t0 >= max_time:
            status = "max_time"
            break
        # ---- penalty update (multipliers were updated above)
        if viol > 1e-12 and viol > 0.25 * prev_viol and rho < rho_max:
            rho *= 2.0
        prev_viol = viol
    bar.close()
    h = history[-1]
    return SolveResult(
        Z=best_Z, objective=best_primal, dual_objective=h["dual"], gap=h["gap"], rel_gap=h["rel_gap"],
        iterations=it_total, time=time.perf_counter() - t0, status=status, solver="auglag", history=history,
        info={"violation": h["violation"], "rho": rho, "outer": len(history)},
    )
