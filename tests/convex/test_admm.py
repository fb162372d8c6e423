"""ADMM fast path: agreement with CVXPY/FISTA per head, valid certificates, Gram and Woodbury branches."""

import pytest
import torch

from dualattn.convex import fit
from dualattn.convex.heads import get_head
from dualattn.convex.losses import get_loss
from dualattn.convex.solvers.admm import admm, symmetric_basis

HEADS = [
    ("linear", {}, 4, 3),
    ("gated", {"num_gates": 2}, 4, 3),
    ("mixer-linear", {}, 4, 3),
    ("mixer-gated", {"num_gates": 2}, 3, 2),
    ("fno", {}, 6, 3),
    ("mlp-gated", {"num_gates": 3}, 1, 3),  # s = 1: masked features (scnn's problem)
    ("mlp-gated", {"num_gates": 3}, 3, 3),
]


@pytest.mark.parametrize("name,opts,s,d", HEADS)
def test_admm_matches_cvxpy_and_fista(make_data, name, opts, s, d):
    X, y = make_data(n=20, s=s, d=d, c=2, seed=11)
    beta = 0.3
    ours = fit(name, X, y, beta, solver="admm", tol=1e-8, head_options=opts)
    ref = fit(name, X, y, beta, solver="cvxpy", head_options=opts)
    fista = fit(name, X, y, beta, tol=1e-6, head_options=opts)
    assert ours.status == "optimal" and ours.rel_gap <= 1e-8 and ours.solver == "admm"
    assert abs(ours.objective - ref.objective) <= 1e-6 * abs(ref.objective)
    # both gaps are certified: |difference| <= max(gap) <= 1e-6 * objective
    assert abs(ours.objective - fista.objective) <= 1e-6 * max(ours.objective, fista.objective)
    # the certificate is a valid lower bound on the optimum found by the interior-point solver
    assert ours.dual_objective <= ref.info["cvxpy_value"] + 1e-9 * abs(ref.objective)
    assert ours.dual_objective <= ours.objective
    # same model in output space (squared loss is strongly convex in the outputs)
    P = ref.predict(X)
    assert torch.allclose(ours.predict(X), P, atol=1e-4 * float(P.abs().max()))


def test_gram_and_woodbury_branches_agree(make_data):
    head = get_head("linear")
    d, c = 3, 2
    head.setup(d, c)
    r = symmetric_basis(1, d).r  # 18 = d^2 (d + 1) / 2
    loss = get_loss("squared")
    for n in (r - 6, r + 10):  # auto: Woodbury below r, Gram above
        X, Y = make_data(n=n, s=4, d=d, c=c, seed=n)
        auto = admm(head, X, Y, loss, 0.2, tol=1e-9)
        assert auto.info["mode"] == ("woodbury" if n < r else "gram") and auto.info["reduced_dim"] == r
        other = admm(head, X, Y, loss, 0.2, tol=1e-9, mode="gram" if n < r else "woodbury")
        full = admm(head, X, Y, loss, 0.2, tol=1e-9, reduce=False)  # no symmetric reduction (D = d^3)
        assert full.info["reduced_dim"] == d**3
        chunked = admm(head, X, Y, loss, 0.2, tol=1e-9, chunk_size=7)  # statistics streamed over chunks
        for res in (auto, other, full, chunked):
            assert res.status == "optimal"
            assert res.objective == pytest.approx(auto.objective, rel=1e-8)
            assert torch.allclose(res.Z, auto.Z, atol=1e-4 * float(auto.Z.abs().max()))


def test_status_needs_certificate_and_stats_are_checked(make_data):
    X, y = make_data(n=30, s=4, d=3, c=2, seed=3)
    capped = fit("linear", X, y, 0.1, solver="admm", tol=1e-12, max_iter=3, check_every=1)
    assert capped.status == "max_iter" and capped.rel_gap > 1e-12 and capped.iterations == 3
    # certificate evaluated every check_every iterations only
    f = fit("linear", X, y, 0.1, solver="admm", tol=1e-6, check_every=7)
    assert f.status == "optimal" and all(h["iter"] % 7 == 0 for h in f.history)
    assert f.info["factorisations"] == f.info["rho_updates"] + 1  # refactorised only when rho changed


def test_warm_start_and_float32(make_data):
    X, y = make_data(n=30, s=4, d=3, c=2, seed=4)
    cold = fit("gated", X, y, 0.2, solver="admm", tol=1e-7, head_options={"num_gates": 2})
    warm = fit("gated", X, y, 0.2, solver="admm", tol=1e-7, head_options={"num_gates": 2}, Z0=cold.Z)
    assert warm.iterations <= 20 and warm.objective == pytest.approx(cold.objective, rel=1e-7)
    f32 = fit("linear", X, y, 0.2, solver="admm", tol=1e-3, dtype=torch.float32)
    ref = fit("linear", X, y, 0.2, solver="admm", tol=1e-8)
    assert f32.Z.dtype == torch.float32 and f32.info["certified_float64"]
    assert f32.objective == pytest.approx(ref.objective, rel=2e-3)
    assert (f32.status == "optimal") == (f32.rel_gap <= 1e-3)


def test_refuses_unsupported_losses_heads_and_options(make_data):
    X, y = make_data(n=12, s=3, d=3, c=3, seed=5, loss="cross_entropy")
    with pytest.raises(ValueError, match="squared-loss"):
        fit("linear", X, y, 0.1, loss="cross_entropy", solver="admm")
    X, y = make_data(n=12, s=1, d=3, c=2, seed=5)
    with pytest.raises(ValueError, match="head 'mlp-relu-cone' has cone constraints: use solver='auglag'"):
        fit("mlp-relu-cone", X, y[:, :1], 0.1, solver="admm")
    gated = get_head("mlp-gated", num_gates=2).setup(3, 2)
    gated.name = "my-head"  # a head admm was not written for
    with pytest.raises(ValueError, match="admm supports heads"):
        admm(gated, X, y, get_loss("squared"), 0.1)
    with pytest.raises(ValueError, match="check_every"):
        fit("linear", X, y, 0.1, solver="admm", check_every=0)
    with pytest.raises(ValueError, match="mode"):
        fit("linear", X, y, 0.1, solver="admm", mode="dense")
    with pytest.raises(ValueError, match="max_dim"):
        fit("linear", X, y, 0.1, solver="admm", max_dim=4)


def test_compare_solvers_rows_and_table():
    from dualattn.convex.compare import compare_solvers, markdown_table

    rows = compare_solvers(n=12, s=3, d=2, c=2, beta=0.3, repeats=1)
    assert [r["solver"] for r in rows] == ["admm", "fista", "cvxpy-clarabel"]
    assert all(r["status"] == "optimal" and r["rel_gap"] <= 1e-4 for r in rows)
    assert all(abs(r["obj_diff_vs_cvxpy"]) <= 1e-4 and r["speedup_vs_cvxpy"] > 0 for r in rows)
    table = markdown_table(rows)
    assert table.count("\n") == 4 and "| admm | optimal |" in table
