"""Convex MLP-Mixer heads: operator identities, exact recovery, agreement with CVXPY."""

from __future__ import annotations

import pytest
import torch

from dualattn.convex.heads import get_head

D, C = 3, 2


def _head(name, s, **opts):
    return get_head(name, **opts).setup(D, C, s=s)


@pytest.mark.parametrize("name,opts,s", [("mixer-linear", {}, 5), ("mixer-gated", {"num_gates": 3}, 4)])
def test_adjoint_and_exact_recovery(name, opts, s):
    head = _head(name, s, **opts)
    X = torch.randn(6, s, D, dtype=torch.float64)
    feats = head.features(X)
    Z = torch.randn(head.variable_shape(), dtype=torch.float64)
    V = torch.randn(6, C, dtype=torch.float64)
    # <A(Z), V> = <Z, A*(V)>
    assert torch.allclose((head.apply(Z, feats) * V).sum(), (head.adjoint(V, feats) * Z).sum(), atol=1e-10)
    # the recovered nonconvex network computes the same outputs, and its weight decay is R(Z)
    w = head.recover(Z)
    assert torch.allclose(head.nonconvex_forward(w, X), head.forward(Z, X), atol=1e-10)
    assert torch.allclose(head.nonconvex_penalty(w), head.penalty(Z), atol=1e-10)


def test_linear_mixer_matches_literal_formula():
    """Pooled linear mixer: (1/s) 1^T W1 X W2 with W1 = 1 a^T / sqrt(s) equals <X, a b^T>/sqrt(s)."""
    s = 4
    head = _head("mixer-linear", s)
    X = torch.randn(5, s, D, dtype=torch.float64)
    a = torch.randn(s, dtype=torch.float64)
    W2 = torch.randn(D, C, dtype=torch.float64)
    Z = (a[:, None] * W2.reshape(1, -1))[None]
    W1 = torch.ones(s, 1, dtype=torch.float64) * a[None, :] / s**0.5
    literal = (W1 @ X @ W2).mean(dim=1)
    assert torch.allclose(head.forward(Z, X), literal, atol=1e-12)


def test_gated_mixer_gates_depend_on_token_and_channel():
    s = 4
    head = _head("mixer-gated", s, num_gates=2)
    X = torch.randn(10, s, D, dtype=torch.float64)
    M = head.gates(X)
    assert M.shape == (10, 2, s, D)
    assert 0.1 < M.mean() < 0.9  # both gate values occur
    # a neuron whose gate is all-on behaves like the linear token mixer
    W1 = torch.randn(1, s, s, dtype=torch.float64)
    W2 = torch.randn(1, D, C, dtype=torch.float64)
    w = {"W1": W1, "W2": W2, "gate_index": torch.zeros(1, dtype=torch.long), "G": head.G.clone()}
    out = head.nonconvex_forward(w, X)
    manual = ((M[:, 0] * torch.einsum("tu,nue->nte", W1[0], X)) @ W2[0]).mean(dim=1)
    assert torch.allclose(out, manual, atol=1e-12)


def test_bad_input_errors():
    head = get_head("mixer-linear")
    with pytest.raises(RuntimeError, match="setup"):
        head.variable_shape()
    head.setup(D, C)  # no s
    with pytest.raises(ValueError, match="s=<number of tokens>"):
        head.variable_shape()
    head = _head("mixer-gated", 4, num_gates=2)
    with pytest.raises(ValueError, match=r"\(n, s, d=3\)"):
        head.features(torch.randn(2, 4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="s=4 tokens"):
        head.features(torch.randn(2, 3, D, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        head.features(torch.ones(2, 4, D, dtype=torch.long))
    with pytest.raises(ValueError, match="num_gates"):
        get_head("mixer-gated", num_gates=0)


@pytest.mark.parametrize(
    "name,opts,loss",
    [("mixer-linear", {}, "squared"), ("mixer-gated", {"num_gates": 2}, "squared"),
     ("mixer-gated", {"num_gates": 2}, "cross_entropy")],
)
def test_fista_matches_cvxpy_and_recovery_is_optimal(name, opts, loss):
    from dualattn.convex import fit, nonconvex_objective

    s, n, beta = 3, 12, 0.1
    X = torch.randn(n, s, D, dtype=torch.float64)
    y = torch.randint(0, C, (n,))
    ours = fit(name, X, y, beta, loss=loss, tol=1e-7, head_options=opts)
    ref = fit(name, X, y, beta, loss=loss, solver="cvxpy", head_options=opts)
    assert ours.status == "optimal"
    assert abs(ours.objective - ref.objective) <= 1e-4 * abs(ref.objective)
    # the recovered nonconvex mixer, scored with the nonconvex objective, attains the convex optimum
    module = ours.to_nonconvex()
    nc = float(nonconvex_objective(module, X, y, beta, loss=loss).detach())
    assert abs(nc - ours.objective) <= 1e-6 * abs(ours.objective)
    assert ours.num_heads >= 1
