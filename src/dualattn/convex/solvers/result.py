"""Solver results and the duality-gap certificate.

For ``P(Z) = F(A Z) + beta R(Z)`` and any ``lam`` with ``R°(A^* lam) <= beta``,
weak duality gives ``P(Z) >= P* >= D(lam) = -F*(lam)``.  From a primal point
``Z`` we take ``lam = grad F(A Z)`` (optimal at ``Z*``), scale it by
``theta <= beta / R°(A^* lam)`` into the dual feasible set, and report
``gap = P(Z) - D(theta lam) >= P(Z) - P*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from dualattn.convex.losses import Loss


@dataclass
class SolveResult:
    """What every solver returns (``Z`` is the best primal point found).

    Factorised solvers return ``Z=None`` and ``factors=(A, B)`` with ``Z_g = A_g B_g^T``
    (``A (P, p, r)``, ``B (P, q, r)``); dense solvers return ``Z`` and ``factors=None``.
    """

    Z: Tensor | None
    objective: float
    dual_objective: float
    gap: float
    rel_gap: float
    iterations: int
    time: float
    status: str
    solver: str
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    #: the dual point (before scaling) that gave ``dual_objective``, if any
    lam: Tensor | None = None
    #: ``(A, B)`` with ``Z_g = A_g B_g^T`` (factorised solvers)
    factors: tuple[Tensor, Tensor] | None = None


def relative_gap(gap: float, primal: float) -> float:
    """``gap / max(|primal|, 1e-12)``."""
    return float(gap) / max(abs(float(primal)), 1e-12)


def dual_point_value(head, loss: Loss, Y: Tensor, beta: float, lam: Tensor, Atlam: Tensor) -> tuple[float, float]:
    """Dual value at ``theta lam`` with ``theta`` best in ``[0, beta / R°(A^* lam)]``; returns ``(D, theta)``."""
    rho = float(head.dual_norm(Atlam))
    theta_max = float("inf") if rho == 0.0 else beta / rho
    val, theta = loss.dual_value(lam, Y, theta_max)
    return float(val), theta


def certificate(head, op, loss: Loss, Y: Tensor, beta: float, Z: Tensor, lam: Tensor | None = None) -> dict:
    """Primal value at ``Z``, best dual value of ``grad F(A Z)`` and of the optional extra dual
    point ``lam``, absolute and relative gap (one forward + one or two adjoints)."""
    U = op.forward(Z)
    f, lamZ = loss.value_grad(U, Y)
    primal = float(f) + beta * float(head.penalty(Z))
    dual, theta = dual_point_value(head, loss, Y, beta, lamZ, op.adjoint(lamZ))
    if lam is not None:
        lam = lam.to(dtype=U.dtype, device=U.device)
        d2, th2 = dual_point_value(head, loss, Y, beta, lam, op.adjoint(lam))
        if d2 > dual:
            dual, theta = d2, th2
    gap = max(primal - dual, 0.0)
    return {"primal": primal, "dual": dual, "gap": gap, "rel_gap": relative_gap(gap, primal), "theta": theta}


def to_float(x) -> float:
    return float(x.item() if isinstance(x, torch.Tensor) else x)
