"""Baseline and nonconvex heads: objective, learning, errors."""

import numpy as np
import pytest
import torch

from dualattn.transfer.heads import (BASELINES, PooledLinear, fit_baseline, fit_module, fit_nonconvex_counterpart,
                                     objective, risk)


def _toy(n=160, s=4, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, s, d)).astype(np.float32)
    y = (X[:, 0, 0] + X[:, 1:, 1].mean(1) > 0).astype(np.int64)
    return X[: n // 2], y[: n // 2], X[n // 2:], y[n // 2:]


def test_risk_matches_the_summed_losses():
    logits, y = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    ce = -(torch.log_softmax(logits, 1)[torch.arange(5), y]).sum()
    assert torch.allclose(risk(logits, y, "cross_entropy"), ce)
    sq = 0.5 * ((logits - torch.nn.functional.one_hot(y, 3)) ** 2).sum()
    assert torch.allclose(risk(logits, y, "squared"), sq)
    assert torch.allclose(risk(logits, y, "squared", "mean"), sq / 5)
    with pytest.raises(ValueError, match="loss"):
        risk(logits, y, "hinge")


def test_linear_probe_learns_and_reports_its_objective():
    X, y, Xs, ys = _toy()
    res = fit_baseline("linear-probe", X, y, Xs, ys, beta=0.1)
    assert res.test_acc > 0.85 and res.train_acc > 0.85
    model = PooledLinear(6, 2)
    fit_module(model, X, y, Xs, ys, head="x", beta=0.1, optimizer="lbfgs", epochs=300)
    j = objective(model, torch.as_tensor(X), torch.as_tensor(y), "cross_entropy", 0.1)
    assert abs(j - res.objective) / res.objective < 1e-3  # deterministic full-batch optimum


@pytest.mark.parametrize("head", [h for h in BASELINES if h != "linear-probe"])
def test_adam_baselines_fit_the_training_data(head):
    X, _, Xs, _ = _toy()
    y, ys = (X[:, :, 1].mean(1) > 0).astype(np.int64), (Xs[:, :, 1].mean(1) > 0).astype(np.int64)
    res = fit_baseline(head, X, y, Xs, ys, beta=1e-2, epochs=25, lr=1e-2, batch_size=16, hidden=32)
    assert res.train_acc > 0.85 and res.test_acc > 0.75 and res.params > 0
    assert res.objective < 0.5 * 80 * np.log(2)  # well below the chance-level loss


def test_nonconvex_counterpart_objective_uses_the_convex_penalty():
    from dualattn.convex import nonconvex_objective
    from dualattn.convex.heads import get_head

    X, y, Xs, ys = _toy()
    res = fit_nonconvex_counterpart("linear", X, y, Xs, ys, m=3, beta=0.5, epochs=30, seed=1)
    assert res.head == "adam:linear" and res.extra["m"] == 3
    # retrain deterministically and evaluate with the convex package's own formula
    head = get_head("linear", seed=1).setup(6, 2, s=4, dtype=torch.float32)
    w = head.init_nonconvex(3, generator=torch.Generator().manual_seed(1), scale=0.1)
    module = head.nonconvex_module(w)
    again = fit_module(module, X, y, Xs, ys, head="x", beta=0.5, epochs=30, seed=1)
    ref = float(nonconvex_objective(module, torch.as_tensor(X), torch.as_tensor(y), 0.5, loss="cross_entropy").detach())
    assert abs(again.objective - ref) / ref < 1e-4
    assert abs(again.objective - res.objective) / ref < 1e-4


def test_heads_reject_bad_input():
    X, y, Xs, ys = _toy()
    with pytest.raises(ValueError, match="X"):
        fit_baseline("mlp", X[:, 0], y, Xs, ys)
    bad = X.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_baseline("mlp", bad, y, Xs, ys)
    with pytest.raises(ValueError, match="y"):
        fit_baseline("mlp", X, y.astype(float), Xs, ys)
    with pytest.raises(ValueError, match="head"):
        fit_baseline("svm", X, y, Xs, ys)
    with pytest.raises(ValueError, match="beta"):
        fit_baseline("mlp", X, y, Xs, ys, beta=-1)


def test_flatten_pool_sees_position_specific_information():
    # label = sign of feature 0 of token 2 only: invisible to [cls, mean] pooling when diluted
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 6, 3)).astype(np.float32)
    y = (X[:, 2, 0] > 0).astype(np.int64)
    flat = fit_baseline("linear-probe", X[:300], y[:300], X[300:], y[300:], beta=0.01, pool="flatten")
    cls_mean = fit_baseline("linear-probe", X[:300], y[:300], X[300:], y[300:], beta=0.01)
    assert flat.params == 6 * 3 * 2 + 2 and flat.test_acc > 0.9
    assert flat.test_acc > cls_mean.test_acc + 0.1
    with pytest.raises(ValueError, match="pool"):
        fit_baseline("mlp", X, y, X, y, pool="max")


def test_convex_head_at_width_never_forms_the_dense_Z():
    """A factorised fit whose dense Z exceeds max_dense_bytes still gets its size recorded (P p q from the
    factors' shapes): the transfer runner must not form Z (it failed at d = 384 with a MemoryError)."""
    import torch

    from dualattn.convex import fit
    from dualattn.transfer.runner import _num_params

    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, 4, generator=g, dtype=torch.float64)
    y = torch.arange(20) % 2
    cf = fit("linear", X, y, 1.0, loss="cross_entropy", solver="factorised", tol=1e-3)
    cf.max_dense_bytes = 8
    with pytest.raises(MemoryError):
        cf.Z
    assert _num_params(cf) == 4 * 4 * 4 * 2  # Z: d^2 x dc
