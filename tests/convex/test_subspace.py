"""Proximal Newton on the core of the factors (convex/solvers/subspace.py): the core Jacobian,
exactness when the spans are the whole space, monotonicity and core stationarity, the
``polish`` switch of the factorised solver."""

import pytest
import torch

from dualattn.convex import fit
from dualattn.convex.heads import get_head
from dualattn.convex.losses import get_loss
from dualattn.convex.solvers import subspace
from dualattn.convex.solvers.factorised import FactoredOperator, factorised

def _problem(scaled_data, name, opts, loss, **kw):
    X, y = scaled_data(loss, **kw)
    c = y.shape[1] if loss == "squared" else int(y.max()) + 1
    head = get_head(name, **opts).setup(X.shape[2], c, s=X.shape[1], dtype=torch.float64)
    head.check_X(X)
    lossf = get_loss(loss)
    Y, _ = lossf.targets(y, X.shape[0], c)
    return head, X, Y, lossf


def test_core_jacobian_matches_forward(head_case, scaled_data):
    """``J vec(M)`` = the head's output at ``Z = Q_a M Q_b^T``, for every head (vmap over rank-one outputs)."""
    head, opts = head_case
    h, X, _, _ = _problem(scaled_data, head, opts, "squared", n=9, s=5, c=2)
    g = torch.Generator().manual_seed(4)
    P, p, q = h.variable_shape()
    A = torch.randn(P, p, 3, generator=g, dtype=torch.float64)
    B = torch.randn(P, q, 3, generator=g, dtype=torch.float64)
    Qa, Qb, M0 = subspace.core_of(A, B)
    torch.testing.assert_close(Qa @ M0 @ Qb.transpose(1, 2), A @ B.transpose(1, 2))
    M = torch.randn(M0.shape, generator=g, dtype=torch.float64)
    J = subspace.core_jacobian(h, h.factored_features(X), Qa, Qb)
    assert J.shape == (9 * 2, M.numel())
    expected = h.forward(Qa @ M @ Qb.transpose(1, 2), X)
    torch.testing.assert_close((J @ M.reshape(-1)).reshape(9, 2), expected)


def test_widened_core_keeps_the_point():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, 7, 2, generator=g, dtype=torch.float64), torch.randn(2, 5, 2, generator=g, dtype=torch.float64)
    U, V = torch.randn(2, 7, 3, generator=g, dtype=torch.float64), torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    Qa, Qb, M = subspace.core_of(A, B, (U, V))
    assert Qa.shape == (2, 7, 5) and Qb.shape == (2, 5, 5) and M.shape == (2, 5, 5)
    torch.testing.assert_close(Qa.transpose(1, 2) @ Qa, torch.eye(5, dtype=torch.float64).expand(2, 5, 5))
    torch.testing.assert_close(Qa @ M @ Qb.transpose(1, 2), A @ B.transpose(1, 2))


@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
@pytest.mark.parametrize("head,opts", [("linear", {}), ("gated", {"num_gates": 2})])
def test_polish_on_the_whole_space_is_the_global_optimum(head, opts, loss, scaled_data):
    """With spans covering R^p and R^q the restricted problem is the full program: the proximal
    Newton polish from a crude point reaches the FISTA optimum (1e-6) and certifies."""
    h, X, Y, lossf = _problem(scaled_data, head, opts, loss, n=20, s=3, d=2, c=2, seed=1)
    beta = 0.1 if loss == "squared" else 0.05
    P, p, q = h.variable_shape()
    g = torch.Generator().manual_seed(2)
    A = 0.1 * torch.randn(P, p, 1, generator=g, dtype=torch.float64)
    B = 0.1 * torch.randn(P, q, 1, generator=g, dtype=torch.float64)
    eye_p = torch.eye(p, dtype=torch.float64).expand(P, p, p).contiguous()
    eye_q = torch.eye(q, dtype=torch.float64).expand(P, q, q).contiguous()
    op = FactoredOperator(h, X, chunk_size=7)
    k = min(p, q)  # core_of widens A by U (P, p, k) and B by V (P, q, k): pad the smaller identity
    U = torch.cat([eye_p, torch.zeros(P, p, max(q - p, 0), dtype=torch.float64)], dim=2)
    V = torch.cat([eye_q, torch.zeros(P, q, max(p - q, 0), dtype=torch.float64)], dim=2)
    assert k >= 1 and U.shape[2] == V.shape[2]
    A2, B2, info = subspace.polish_core(op, lossf, Y, beta, A, B, extra=(U, V), steps=50)
    ref = fit(head, X, Y if loss == "squared" else Y.long(), beta, loss=loss, solver="fista", tol=1e-9,
              head_options=opts, max_iter=200000)
    assert info["steps"] >= 1 and info["end"] < info["start"]
    assert info["end"] == pytest.approx(ref.objective, rel=1e-6)
    assert info["end"] >= ref.dual_objective - 1e-9 * abs(ref.objective)  # never below a valid lower bound


def test_polish_never_increases_and_makes_the_core_stationary(scaled_data):
    """From an L-BFGS point, the polish does not increase the objective and leaves the core
    gradient ``Q_a^T A^*(lam) Q_b`` with spectral norm <= beta (1 + 1e-3): optimal on the spans."""
    h, X, Y, lossf = _problem(scaled_data, "linear", {}, "cross_entropy", n=60, s=4, d=4, c=3, seed=3)
    beta = 0.02
    res = factorised(h, X, lossf, Y, beta, tol=1e-12, max_outer=3, polish=False, final_certificate=False)
    A, B = res.factors
    op = FactoredOperator(h, X)
    start = float(lossf.value(op.forward(A, B), Y)) + beta * float(torch.linalg.svdvals(A @ B.transpose(1, 2)).sum())
    A2, B2, info = subspace.polish_core(op, lossf, Y, beta, A, B, steps=30)
    assert info["start"] == pytest.approx(start, rel=1e-10)
    assert info["end"] <= info["start"]
    _, lam = lossf.value_grad(op.forward(A2, B2), Y)
    G = h.adjoint(lam, h.features(X))
    Qa, Qb, _ = subspace.core_of(A, B)
    assert float(torch.linalg.matrix_norm(Qa.transpose(1, 2) @ G @ Qb, ord=2).max()) <= beta * (1 + 1e-3)


@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_factorised_with_and_without_polish_agree(loss, scaled_data):
    X, y = scaled_data(loss, n=30, s=4, d=3, c=3, seed=4)
    beta = 0.05 if loss == "squared" else 0.02
    on = fit("linear", X, y, beta, loss=loss, solver="factorised", tol=1e-5, polish=True, polish_trigger=1.0)
    off = fit("linear", X, y, beta, loss=loss, solver="factorised", tol=1e-5, polish=False)
    assert on.status == "optimal" and off.status == "optimal"
    assert on.info["newton_steps"] >= 1 and off.info["newton_steps"] == 0
    assert on.objective == pytest.approx(off.objective, rel=2e-5)
    assert on.dual_objective <= off.objective + 1e-9 and off.dual_objective <= on.objective + 1e-9


def test_polish_option_errors(scaled_data):
    X, y = scaled_data("squared", n=12, s=3, d=2, c=2)
    with pytest.raises(ValueError, match="polish must be True, False or 'auto'"):
        fit("linear", X, y, 0.1, solver="factorised", polish="yes")
    with pytest.raises(ValueError, match="polish_max_vars=1"):
        fit("linear", X, y, 0.1, solver="factorised", polish=True, polish_trigger=1.0, polish_max_vars=1)
    h, Xp, Y, lossf = _problem(scaled_data, "linear", {}, "squared", n=12, s=3, d=2, c=2)
    op = FactoredOperator(h, Xp)
    A = torch.ones(1, 4, 1, dtype=torch.float64)
    B = torch.ones(1, 4, 1, dtype=torch.float64)

    class Hinge:  # a loss the polish has no Hessian for
        name = "hinge"

    with pytest.raises(ValueError, match="supports losses"):
        subspace.polish_core(op, Hinge(), Y, 0.1, A, B)
