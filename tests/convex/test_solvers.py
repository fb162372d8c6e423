"""FISTA against the CVXPY reference, certificates, stopping rule, warm starts and paths."""

import math

import pytest
import torch

from dualattn.convex import beta_max, fit, fit_path
from dualattn.convex.solvers.result import relative_gap

CASES = [
    ("linear", {}, "squared", 0.5),
    ("linear", {}, "cross_entropy", 0.3),
    ("gated", {"num_gates": 2}, "squared", 0.5),
    ("gated", {"num_gates": 2}, "cross_entropy", 0.3),
    ("mlp-gated", {"num_gates": 4}, "squared", 0.2),
    ("mlp-gated", {"num_gates": 4}, "cross_entropy", 0.2),
]


@pytest.mark.parametrize("head,opts,loss,beta", CASES)
def test_fista_matches_cvxpy(make_data, head, opts, loss, beta):
    X, y = make_data(n=16, s=4, d=3, c=2 if loss == "squared" else 3, seed=1, loss=loss)
    f = fit(head, X, y, beta, loss=loss, tol=1e-6, head_options=opts)
    r = fit(head, X, y, beta, loss=loss, solver="cvxpy", head_options=opts)
    ref = r.info["cvxpy_value"]
    assert f.status == "optimal" and f.rel_gap <= 1e-6
    assert abs(f.objective - ref) <= 1e-4 * abs(ref)
    # the certificate is a valid bound: dual value <= every primal value
    assert f.dual_objective <= ref + 1e-6 * abs(ref)
    assert r.dual_objective <= f.objective + 1e-9 * abs(ref)
    # the solutions agree in prediction space (strongly convex loss in the outputs for squared)
    if loss == "squared":
        assert torch.allclose(f.predict(X), r.predict(X), atol=1e-3 * float(r.predict(X).abs().max()))


def test_stops_on_gap_not_iterations(make_data):
    X, y = make_data(n=16, s=4, d=3, c=2, seed=2)
    loose = fit("linear", X, y, 0.5, tol=1e-2)
    tight = fit("linear", X, y, 0.5, tol=1e-7)
    assert loose.status == tight.status == "optimal"
    assert loose.rel_gap <= 1e-2 and tight.rel_gap <= 1e-7
    assert loose.iterations < tight.iterations
    assert tight.objective <= loose.objective + 1e-12
    # history is consistent with the reported certificate
    last = tight.history[-1]
    assert last["rel_gap"] == pytest.approx(tight.rel_gap)
    assert math.isclose(relative_gap(tight.gap, tight.objective), tight.rel_gap)
    gaps = [h["gap"] for h in tight.history]
    assert all(b <= a + 1e-12 for a, b in zip(gaps, gaps[1:]))  # best-bound gap is monotone
    capped = fit("linear", X, y, 0.5, tol=1e-12, max_iter=5)
    assert capped.status == "max_iter" and capped.iterations == 5 and capped.gap > 0


def test_beta_max_gives_zero_solution(make_data):
    X, y = make_data(n=12, s=3, d=3, c=2, seed=3)
    bmax = beta_max("linear", X, y)
    f = fit("linear", X, y, 1.01 * bmax, tol=1e-8)
    assert f.Z.abs().max() == 0 and f.rel_gap <= 1e-8
    g = fit("linear", X, y, 0.5 * bmax, tol=1e-6)
    assert g.Z.abs().max() > 0


@pytest.mark.parametrize("solver,max_resume_iters", [("fista", 3), ("admm", 21)])
def test_warm_start_path_and_resume(make_data, tmp_path, solver, max_resume_iters):
    X, y = make_data(n=12, s=3, d=3, c=2, seed=4)
    bmax = beta_max("linear", X, y)
    betas = [0.1 * bmax, 0.5 * bmax, 0.25 * bmax]
    ck = tmp_path / "path.pt"
    fits = fit_path("linear", X, y, betas, tol=1e-6, checkpoint=ck, solver=solver)
    assert [f.beta for f in fits] == sorted(betas, reverse=True)
    assert all(f.solver == solver and f.status == "optimal" for f in fits)
    objs = [f.objective for f in fits]
    assert all(b <= a + 1e-9 for a, b in zip(objs, objs[1:]))  # objective decreases with beta
    cold = fit("linear", X, y, fits[-1].beta, tol=1e-6, solver=solver)
    assert fits[-1].objective == pytest.approx(cold.objective, rel=1e-5)
    # resume: every beta is warm-started from its saved solution and finishes at once
    # (ADMM: at its first certificate check, after one step or one check period of 10 + 10)
    again = fit_path("linear", X, y, betas, tol=1e-6, checkpoint=ck, solver=solver)
    assert all(a.iterations <= max_resume_iters for a in again), [a.iterations for a in again]
    assert max(a.iterations for a in again) < min(f.iterations for f in fits)
    assert [a.objective for a in again] == pytest.approx(objs, rel=1e-6)


def test_float32_and_chunking_agree(make_data):
    X, y = make_data(n=40, s=4, d=3, c=2, seed=5)
    f64 = fit("linear", X, y, 0.5, tol=1e-6)
    chunked = fit("linear", X, y, 0.5, tol=1e-6, chunk_size=7)
    assert chunked.objective == pytest.approx(f64.objective, rel=1e-5)
    f32 = fit("linear", X, y, 0.5, tol=1e-3, dtype=torch.float32)
    assert f32.Z.dtype == torch.float32
    assert f32.objective == pytest.approx(f64.objective, rel=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_gpu_matches_cpu(make_data):
    X, y = make_data(n=64, s=4, d=4, c=3, seed=6)
    cpu = fit("linear", X, y, 0.5, tol=1e-6)
    gpu = fit("linear", X, y, 0.5, tol=1e-6, device="cuda")
    assert gpu.Z.is_cuda
    assert gpu.objective == pytest.approx(cpu.objective, rel=1e-5)


def test_save_load_roundtrip(make_data, tmp_path):
    X, y = make_data(n=10, s=3, d=3, c=2, seed=11)
    f = fit("gated", X, y, 0.3, tol=1e-5, head_options={"num_gates": 2, "seed": 3})
    f.save(tmp_path / "fit.pt")
    from dualattn.convex import ConvexFit

    g = ConvexFit.load(tmp_path / "fit.pt")
    assert g.objective == f.objective and g.head.name == "gated" and g.head.get_config() == f.head.get_config()
    assert torch.allclose(g.predict(X), f.predict(X), atol=1e-12)
    assert torch.allclose(g.to_nonconvex()(X), f.predict(X), atol=1e-8)


def _cvxpy_cone_relu(head, X, y, beta):
    """Independent CVXPY model of the cone-constrained ReLU MLP program."""
    import cvxpy as cp

    f = head.features(X)
    n, s, d = X.shape
    P = head.num_gates
    M = f["M"].numpy().reshape(n, P, d)
    S = f["S"].reshape(-1, P).numpy()
    Xf = X.reshape(-1, d).numpy()
    U, V = cp.Variable((P, d)), cp.Variable((P, d))
    out = sum(M[:, g, :] @ (U[g] - V[g]) for g in range(P))
    cons = []
    for g in range(P):
        cons += [cp.multiply(S[:, g], Xf @ U[g]) >= 0, cp.multiply(S[:, g], Xf @ V[g]) >= 0]
    obj = 0.5 * cp.sum_squares(out - y.numpy()) + beta * (cp.sum(cp.norm(U, 2, axis=1)) + cp.sum(cp.norm(V, 2, axis=1)))
    prob = cp.Problem(cp.Minimize(obj), cons)
    prob.solve(solver="CLARABEL")
    return prob.value


@pytest.mark.slow
def test_auglag_cone_relu_matches_cvxpy(make_data):
    from dualattn.convex import nonconvex_objective
    from dualattn.convex.operator import ChunkedOperator

    X, y = make_data(n=20, s=2, d=3, c=1, seed=13)
    y = y[:, 0]
    f = fit("mlp-relu-cone", X, y, 0.2, solver="auglag", tol=1e-6, max_outer=20, head_options={"num_gates": 5})
    ref = _cvxpy_cone_relu(f.head, X, y, 0.2)
    # Z is feasible, so objective >= optimum >= certified dual bound; the primal is accurate,
    # the AL dual bound is looser (reported, not hidden)
    assert f.dual_objective <= ref + 1e-7 * abs(ref)
    assert ref - 1e-7 * abs(ref) <= f.objective <= ref * (1 + 1e-3)
    assert f.rel_gap == pytest.approx((f.objective - f.dual_objective) / f.objective, rel=1e-6)
    assert f.rel_gap < 0.05
    # the returned Z is feasible, so the ReLU network attains exactly the convex objective
    op = ChunkedOperator(f.head, X)
    assert all(float(g.min()) >= -1e-10 for g in [f.head.constraints(f.Z, ft) for _, _, ft in op.chunks()])
    module = f.to_nonconvex()
    assert float(nonconvex_objective(module, X, y, 0.2).detach()) == pytest.approx(f.objective, rel=1e-9)


def test_cone_head_bad_input(make_data):
    X, y = make_data(n=8, s=2, d=3, c=2, seed=14)
    with pytest.raises(ValueError, match="scalar outputs only"):
        fit("mlp-relu-cone", X, y, 0.2, solver="auglag")
    with pytest.raises(TypeError, match="needs a head with cone constraints"):
        fit("linear", X, y, 0.2, solver="auglag")
    with pytest.raises(ValueError, match="use solver='auglag'"):
        fit("mlp-relu-cone", X, y[:, 0], 0.2, solver="fista")
    assert fit("mlp-relu-cone", X, y[:, 0], 0.2).solver == "auglag"  # "auto" picks the only valid solver
