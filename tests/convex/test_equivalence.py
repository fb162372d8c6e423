"""Convex <-> nonconvex equivalence: recovered heads attain the convex optimum, Adam never beats it."""

import pytest
import torch

from dualattn.convex import fit, nonconvex_objective
from dualattn.convex.nonconvex import train_nonconvex

EXACT = [
    ("linear", {}, "squared"),
    ("linear", {}, "cross_entropy"),
    ("gated", {"num_gates": 2}, "squared"),
    ("mlp-gated", {"num_gates": 4}, "cross_entropy"),
]


@pytest.mark.parametrize("head,opts,loss", EXACT)
def test_recovered_nonconvex_objective_equals_convex_optimum(make_data, head, opts, loss):
    X, y = make_data(n=16, s=4, d=3, c=2 if loss == "squared" else 3, seed=7, loss=loss)
    f = fit(head, X, y, 0.4, loss=loss, tol=1e-6, head_options=opts)
    module = f.to_nonconvex()
    assert isinstance(module, torch.nn.Module)
    assert module.num_heads == f.info["rank"] >= 1
    obj = float(nonconvex_objective(module, X, y, 0.4, loss=loss).detach())
    assert obj == pytest.approx(f.objective, rel=1e-5)
    assert torch.allclose(module(X), f.predict(X), atol=1e-8)
    # the gap certificate brackets the true optimum: nothing feasible is below the dual bound
    assert obj >= f.dual_objective - 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("head,opts,loss", [EXACT[0], EXACT[2]])
def test_adam_never_beats_convex_optimum(make_data, head, opts, loss):
    X, y = make_data(n=12, s=3, d=3, c=2, seed=8, loss=loss)
    beta = 0.3
    f = fit(head, X, y, beta, loss=loss, tol=1e-7, head_options=opts)
    # m = 2 * (total rank bound) heads is enough to represent the optimum
    m = 12
    finals = []
    for seed in range(5):
        h = type(f.head)(**f.head.get_config())
        _, hist = train_nonconvex(h, X, y, beta, m=m, loss=loss, steps=300, lr=0.05, seed=seed, scale=0.3)
        finals.append(hist[-1])
        assert min(hist) >= f.objective * (1 - 1e-6) - 1e-9
    # and Adam does get close (the bound is not vacuous)
    assert min(finals) <= f.objective * 1.15


def test_relu_head_reports_honest_gap(make_data):
    X, y = make_data(n=12, s=3, d=3, c=2, seed=9)
    f = fit("relu", X, y, 0.3, tol=1e-7, head_options={"num_gates": 2})
    g = fit("gated", X, y, 0.3, tol=1e-7, head_options={"num_gates": 2})
    assert f.objective == pytest.approx(g.objective, rel=1e-6)  # same program
    info = f.info
    assert 0.0 <= info["cone_violation"] <= 1.0
    module = f.to_nonconvex()
    obj = float(nonconvex_objective(module, X, y, 0.3).detach())
    assert obj == pytest.approx(info["relu_objective"], rel=1e-8)
    assert info["relu_excess"] == pytest.approx(obj - f.objective, rel=1e-8, abs=1e-10)
    assert info["relu_excess"] >= -1e-8  # a split costs at least the gated weight decay
    # the ReLU network reproduces the gated predictions on the training data
    assert torch.allclose(module(X), f.predict(X), atol=1e-7)


def test_fit_relu_keeps_best_round(make_data):
    from dualattn.convex import fit_relu

    X, y = make_data(n=10, s=3, d=3, c=1, seed=12)
    f = fit_relu("mlp-relu", X, y, 0.3, refits=2, tol=1e-6, head_options={"num_gates": 6})
    rounds = f.info["refits"]
    assert len(rounds) == 3
    assert f.info["relu_objective"] == pytest.approx(min(r[1] for r in rounds))
    # the returned fit is consistent with the head's (restored) gates
    module = f.to_nonconvex()
    assert torch.allclose(module(X), f.predict(X), atol=1e-8)
    obj = float(nonconvex_objective(module, X, y, 0.3).detach())
    assert obj == pytest.approx(f.info["relu_objective"], rel=1e-8)
    with pytest.raises(TypeError, match="re-fittable gates"):
        fit_relu("linear", X, y, 0.3)
