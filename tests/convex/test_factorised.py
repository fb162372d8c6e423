"""Matrix-free factorised (Burer-Monteiro) solver: agreement with the dense solvers, valid
certificates, rank growth, Lanczos norm bounds, ConvexFit factors/Z, automatic solver choice."""

import pytest
import torch

from dualattn.convex import fit, interpret
from dualattn.convex.api import SOLVERS, choose_solver
from dualattn.convex.heads import get_head
from dualattn.convex.lanczos import BlockOperator, kw_epsilon, steps_for
from dualattn.convex.solvers.factorised import FactoredOperator

@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_factorised_matches_dense(head_case, loss, scaled_data):
    head, opts = head_case
    X, y = scaled_data(loss)
    beta = 0.2 if loss == "squared" else 0.05
    dense = fit(head, X, y, beta, loss=loss, solver="fista", tol=1e-7, head_options=opts, max_iter=100000)
    fac = fit(head, X, y, beta, loss=loss, solver="factorised", tol=1e-4, head_options=opts)
    assert fac.status == "optimal" and fac.rel_gap <= 1e-4 and fac.is_factorised
    assert abs(fac.objective - dense.objective) <= 1e-6 * abs(dense.objective)
    # each certificate bounds the other solve's objective from below
    assert fac.dual_objective <= dense.objective + 1e-9 * abs(dense.objective)
    assert dense.dual_objective <= fac.objective + 1e-9 * abs(dense.objective)
    # predictions of the factored model = those of the dense Z formed from the factors
    A, B = fac.factors
    assert torch.allclose(fac.Z, A @ B.transpose(1, 2))
    torch.testing.assert_close(fac.predict(X), fac.head.forward(fac.Z, X))


@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_certificate_brackets_cvxpy(loss, scaled_data):
    X, y = scaled_data(loss, n=12, s=3, d=2, c=2, seed=1)
    for head, opts in [("linear", {}), ("gated", {"num_gates": 2})]:
        fac = fit(head, X, y, 0.1, loss=loss, solver="factorised", tol=1e-4, head_options=opts)
        ref = fit(head, X, y, 0.1, loss=loss, solver="cvxpy", head_options=opts).info["cvxpy_value"]
        assert fac.status == "optimal"
        assert fac.dual_objective <= ref + 1e-7 * abs(ref) and ref <= fac.objective + 1e-7 * abs(ref)


def test_capped_solve_still_reports_a_valid_gap(scaled_data):
    """A factorised solve stopped by its cap (here max_outer=2, far from tol) certifies its best point once:
    a finite gap whose dual value is a valid lower bound on the CVXPY optimum."""
    X, y = scaled_data("cross_entropy", n=12, s=3, d=2, c=2, seed=1)
    capped = fit("linear", X, y, 0.1, loss="cross_entropy", solver="factorised", tol=1e-12, max_outer=2)
    ref = fit("linear", X, y, 0.1, loss="cross_entropy", solver="cvxpy").info["cvxpy_value"]
    assert capped.status == "max_iter" and capped.info["final_certificate"]
    assert 0 < capped.rel_gap < float("inf") and capped.gap == pytest.approx(capped.objective - capped.dual_objective)
    assert capped.dual_objective <= ref + 1e-7 * abs(ref) <= capped.objective + 2e-7 * abs(ref)


def test_max_iter_caps_the_factorised_outer_stages(scaled_data):
    """``fit(max_iter=k)`` is the factorised solver's ``max_outer`` (so a study's iteration cap means the
    same thing whichever solver ``auto`` picks); giving both is refused."""
    X, y = scaled_data("cross_entropy", n=12, s=3, d=2, c=2, seed=1)
    capped = fit("linear", X, y, 0.1, loss="cross_entropy", solver="factorised", tol=1e-12, max_iter=3)
    assert capped.status == "max_iter" and capped.iterations == 3
    with pytest.raises(ValueError, match="max_iter or max_outer"):
        fit("linear", X, y, 0.1, loss="cross_entropy", solver="factorised", max_iter=3, max_outer=3)


def test_rank_grows_from_one_and_certifies(scaled_data):
    X, y = scaled_data("squared", n=40, s=4, d=3, c=3, seed=2)
    f = fit("linear", X, y, 0.02, solver="factorised", tol=1e-4, grow=1)  # one pair per growth step
    ranks = [h["rank"] for h in f.history]
    assert ranks[0] == 0 and ranks[1] == 1  # starts at rank 1
    assert f.info["rank"] > ranks[1] and f.info["growth_steps"] >= 2
    assert f.status == "optimal" and f.history[-1]["certified"]
    # the optimum really has rank > 1 (dense solve)
    dense = fit("linear", X, y, 0.02, solver="fista", tol=1e-7, max_iter=100000)
    assert interpret.effective_rank(dense, tol=1e-4) > 1
    assert interpret.effective_rank(f, tol=1e-4) == interpret.effective_rank(dense, tol=1e-4)


def _random_block_operator(P=2, p=60, q=25, seed=0):
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(P, p, q, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(P, q, q, generator=g, dtype=torch.float64))[0]
    S = torch.rand(P, q, generator=g, dtype=torch.float64)
    S[:, :3] = torch.tensor([1.0, 0.999, 0.998], dtype=torch.float64)  # clustered top: slow Lanczos
    M = U @ torch.diag_embed(S) @ V.transpose(1, 2)
    return M, BlockOperator(M.shape, lambda W: M @ W, lambda Uu: M.transpose(1, 2) @ Uu)


@pytest.mark.parametrize("kwargs", [{}, {"dense_bytes": 0}, {"dense_bytes": 0, "max_steps": 12},
                                    {"dense_bytes": 0, "max_steps": 18, "eps": 0.5}])
def test_norm_bound_is_an_upper_bound(kwargs):
    for seed in range(5):
        M, op = _random_block_operator(seed=seed)
        true = torch.linalg.matrix_norm(M, ord=2)
        nb = op.norm_bound(seed=seed, **kwargs)
        assert (nb.bound >= true).all() and (nb.estimate <= true * (1 + 1e-12)).all()
        if nb.deterministic:
            torch.testing.assert_close(nb.bound, true, rtol=1e-10, atol=0)


def test_warm_started_top_pair_is_sharper():
    """A warm start at a nearby top singular vector gives a better (still lower) estimate in few steps;
    a start of the wrong shape is refused."""
    M, op = _random_block_operator(seed=1)
    true = torch.linalg.matrix_norm(M, ord=2)
    U, S, Vh = torch.linalg.svd(M)
    g = torch.Generator().manual_seed(0)
    near_u = U[:, :, 0] + 0.05 * torch.randn(U[:, :, 0].shape, generator=g, dtype=M.dtype)
    near_v = Vh[:, 0, :] + 0.05 * torch.randn(Vh[:, 0, :].shape, generator=g, dtype=M.dtype)
    cold = op.top_pairs(3, seed=0)[0][:, 0]
    warm = op.top_pairs(3, seed=0, start=(near_u, near_v))[0][:, 0]
    assert (warm <= true * (1 + 1e-12)).all()
    assert ((true - warm) < (true - cold)).all()
    with pytest.raises(ValueError, match="start must have shape"):
        op.top_pairs(3, start=(near_u[:, :2], near_v[:, :2]))


def test_kw_steps():
    assert kw_epsilon(100, 100, 1e-6) == 0.0 and steps_for(50, 1e-4, 1e-6) == 50
    k = steps_for(10_000, 1e-3, 1e-6)
    assert kw_epsilon(10_000, k, 1e-6) <= 1e-3 < kw_epsilon(10_000, k - 1, 1e-6)


def test_factored_operator_matches_dense_adjoint(scaled_data, head_case):
    X, _ = scaled_data("squared", n=10, s=4, d=3, c=2)
    g = torch.Generator().manual_seed(3)
    name, opts = head_case
    head = get_head(name, **opts).setup(3, 2)
    head.check_X(X)
    P, p, q = head.variable_shape()
    A = torch.randn(P, p, 2, generator=g, dtype=torch.float64)
    B = torch.randn(P, q, 2, generator=g, dtype=torch.float64)
    op = FactoredOperator(head, X, chunk_size=3)
    torch.testing.assert_close(op.forward(A, B), head.forward(A @ B.transpose(1, 2), X))
    lam = torch.randn(10, 2, generator=g, dtype=torch.float64)
    M = head.adjoint(lam, head.features(X))
    torch.testing.assert_close(op.adjoint_operator(lam).dense(batch=5), M)


def test_explicit_factored_products_match_dense(head_case, scaled_data):
    """Each head's factored_vjp / adjoint_matmul / adjoint_rmatmul (explicit or autograd default)
    equal the dense products ``A_X(A B^T)``, ``(M B, M^T A)``, ``M W`` and ``M^T U`` with ``M = A_X^*(lam)``."""
    head, opts = head_case
    X, _ = scaled_data("squared", n=7, s=5, d=3, c=2, seed=5)
    g = torch.Generator().manual_seed(11)
    h = get_head(head, **opts).setup(3, 2)
    h.check_X(X)
    P, p, q = h.variable_shape()
    A = torch.randn(P, p, 3, generator=g, dtype=torch.float64)
    B = torch.randn(P, q, 3, generator=g, dtype=torch.float64)
    lam = torch.randn(7, 2, generator=g, dtype=torch.float64)
    feats = h.factored_features(X)
    M = h.adjoint(lam, h.features(X))
    out, vjp = h.factored_vjp(A, B, feats)
    torch.testing.assert_close(out, h.forward(A @ B.transpose(1, 2), X))
    torch.testing.assert_close(h.factored_apply(A, B, feats), out)
    dA, dB = vjp(lam)
    torch.testing.assert_close(dA, M @ B)
    torch.testing.assert_close(dB, M.transpose(1, 2) @ A)
    W = torch.randn(P, q, 4, generator=g, dtype=torch.float64)
    U = torch.randn(P, p, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(h.adjoint_matmul(lam, W, feats), M @ W)
    torch.testing.assert_close(h.adjoint_rmatmul(lam, U, feats), M.transpose(1, 2) @ U)


def test_fit_exposes_factors_and_lazy_Z(scaled_data):
    X, y = scaled_data("cross_entropy", n=20, s=4, d=3, c=3, seed=4)
    dense = fit("linear", X, y, 0.05, loss="cross_entropy", solver="fista", tol=1e-6)
    A, B = dense.factors  # from the SVD of Z with its numerical rank
    torch.testing.assert_close(A @ B.transpose(1, 2), dense.Z)
    fac = fit("linear", X, y, 0.05, loss="cross_entropy", solver="factorised", tol=1e-4)
    fac.max_dense_bytes = 100
    with pytest.raises(MemoryError, match="factors"):
        fac.Z
    # recovered nonconvex weights come from the factors and reproduce the objective
    module = fac.to_nonconvex()
    out = module(X)
    torch.testing.assert_close(out, fac.predict(X))
    obj = float(fac.loss.value(out, fac.Y_train) + fac.beta * module.penalty().detach())
    assert obj == pytest.approx(fac.objective, rel=1e-9)
    assert 1 <= interpret.effective_rank(fac, tol=1e-6) <= fac.num_heads
    S, sigma = interpret.token_similarity(fac, X)
    assert S.shape[:2] == (20, sigma.numel())


def test_save_load_factorised(tmp_path, scaled_data):
    X, y = scaled_data("squared", n=16, s=4, d=3, c=2, seed=5)
    f = fit("linear", X, y, 0.05, solver="factorised", tol=1e-4)
    f.save(tmp_path / "f.pt")
    g = type(f).load(tmp_path / "f.pt")
    assert g.is_factorised
    torch.testing.assert_close(g.predict(X), f.predict(X))


@pytest.mark.slow
def test_warm_start_and_float32(scaled_data):
    X, y = scaled_data("squared", n=16, s=4, d=3, c=2, seed=6)
    f = fit("linear", X, y, 0.05, solver="factorised", tol=1e-4)
    g = fit("linear", X, y, 0.04, solver="factorised", tol=1e-4, Z0=f.warm_start())
    assert g.status == "optimal" and g.history[0]["rank"] > 0
    h = fit("linear", X, y, 0.04, solver="fista", tol=1e-4, Z0=f.warm_start())  # factors -> dense Z0
    assert h.status == "optimal"
    f32 = fit("linear", X, y, 0.05, solver="factorised", tol=1e-3, dtype=torch.float32)
    assert f32.info["certified_float64"] and f32.rel_gap <= 1e-3 or f32.status != "optimal"


def test_choose_solver(scaled_data):
    lin = get_head("linear").setup(8, 10)
    assert choose_solver(lin, 1000, 10, 8, 10, "cross_entropy") == "fista"
    big = get_head("linear").setup(64, 10)
    assert choose_solver(big, 2000, 8, 64, 10, "cross_entropy") == "factorised"
    assert choose_solver(big, 2000, 8, 64, 10, "squared") in ("factorised",)
    small_sq = choose_solver(lin, 1000, 10, 8, 10, "squared")
    assert small_sq == "admm"
    mlp = get_head("mlp-gated").setup(8, 10)  # group lasso: admm supports it, but FISTA's steps are cheaper
    assert choose_solver(mlp, 1000, 10, 8, 10, "squared") == "fista"
    assert choose_solver(lin, 100_000, 10, 8, 10, "squared") == "admm"  # Gram step: order r = 288, not n
    fno = get_head("fno").setup(384, 100, s=10)
    assert choose_solver(fno, 1000, 10, 384, 100, "cross_entropy") == "fista"
    cone = get_head("mlp-relu-cone").setup(4, 1)
    assert choose_solver(cone, 10, 3, 4, 1, "squared") == "auglag"
    # mixer-gated at d = 64: one SVD of Z is above the flop threshold, but Z is 2 MB and the
    # factored forward costs 1.6x the dense one, so dense FISTA is kept
    mixg = get_head("mixer-gated", num_gates=4).setup(64, 10, s=10)
    assert mixg.factored_cost_ratio(10, 16) >= 1
    assert choose_solver(mixg, 1000, 10, 64, 10, "cross_entropy") == "fista"
    mixg_big = get_head("mixer-gated", num_gates=4).setup(384, 100, s=32)  # dense Z: 4 * 1024 * 38400 * 8 B
    assert choose_solver(mixg_big, 1000, 32, 384, 100, "cross_entropy") == "factorised"
    assert choose_solver(big, 2000, 8, 64, 10, "squared", distributed=True) == "factorised"
    X, y = scaled_data("squared", n=12, s=3, d=3, c=2)
    assert fit("linear", X, y, 0.1).solver in ("fista", "admm")


@pytest.mark.parametrize("name, opts, s, d, c", [
    ("linear", {}, 10, 16, 10), ("linear", {}, 3, 5, 2),
    ("gated", {"num_gates": 4}, 10, 16, 10), ("gated", {"num_gates": 2}, 3, 6, 4),
    ("mixer-gated", {"num_gates": 4}, 10, 16, 10), ("mixer-gated", {"num_gates": 3}, 6, 8, 3),
])
def test_factored_cost_ratio_counts_the_matmul_flops(name, opts, s, d, c):
    """``factored_cost_ratio`` (used by ``choose_solver``) equals the ratio of the matmul flops
    that torch's FlopCounterMode counts in ``factored_apply`` and ``apply``."""
    from torch.utils.flop_counter import FlopCounterMode

    head = get_head(name, **opts)
    head = head.setup(d, c, s=s) if name.startswith("mixer") else head.setup(d, c)
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(7, s, d, dtype=torch.float64, generator=gen)
    P, p, q = head.variable_shape()
    r = 5
    A = torch.randn(P, p, r, dtype=torch.float64, generator=gen)
    B = torch.randn(P, q, r, dtype=torch.float64, generator=gen)
    feats, ffeats, Z = head.features(X), head.factored_features(X), A @ B.transpose(1, 2)
    with FlopCounterMode(display=False) as dense:
        out_dense = head.apply(Z, feats)
    with FlopCounterMode(display=False) as factored:
        out_factored = head.factored_apply(A, B, ffeats)
    torch.testing.assert_close(out_factored, out_dense)
    measured = factored.get_total_flops() / dense.get_total_flops()
    assert head.factored_cost_ratio(s, r) == pytest.approx(measured, rel=0.05)
