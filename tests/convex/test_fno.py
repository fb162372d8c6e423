"""Convex FNO head: block nuclear norm in frequency, exact recovery, readout semantics."""

from __future__ import annotations

import math

import pytest
import torch

from dualattn.convex.heads import get_head

D, C = 3, 2


def _head(s, **opts):
    return get_head("fno", **opts).setup(D, C, s=s)


def _embedded(head):
    """A random point of the structured (embedded complex) subspace."""
    V = torch.randn(head.variable_shape(), dtype=torch.float64)
    return head.encode(head.decode(V))


@pytest.mark.parametrize("s,opts", [(6, {}), (5, {}), (8, {"modes": 3, "readout": "last"})])
def test_adjoint_and_exact_recovery(s, opts):
    head = _head(s, **opts)
    X = torch.randn(7, s, D, dtype=torch.float64)
    feats = head.features(X)
    Z = _embedded(head)
    V = torch.randn(7, C, dtype=torch.float64)
    assert torch.allclose((head.apply(Z, feats) * V).sum(), (head.adjoint(V, feats) * Z).sum(), atol=1e-10)
    w = head.recover(Z)
    assert torch.allclose(head.nonconvex_forward(w, X), head.forward(Z, X), atol=1e-10)
    assert torch.allclose(head.nonconvex_penalty(w), head.penalty(Z), atol=1e-10)


def test_penalty_is_weighted_block_nuclear_norm():
    s = 6  # rfft frequencies 0..3; 0 and 3 are real with weight 1, 1 and 2 have weight 2
    head = _head(s)
    V = torch.randn(head.variable_shape(), dtype=torch.float64)
    Zc = head.decode(V)
    assert torch.all(Zc[0].imag == 0) and torch.all(Zc[3].imag == 0)
    expected = sum(w * torch.linalg.svdvals(Zc[l]).sum() for l, w in enumerate([1.0, 2.0, 2.0, 1.0]))
    assert torch.allclose(head.penalty(head.encode(Zc)), expected, atol=1e-10)
    # the stored penalty of an arbitrary V never undercuts its projection (optimum lies on embeddings)
    assert head.penalty(V) >= head.penalty(head.encode(Zc)) - 1e-10


def _literal_fno(head, w, X):
    """Dense unitary DFT matrix, full Hermitian spectrum, inverse DFT, token readout."""
    s = X.shape[1]
    t = torch.arange(s, dtype=torch.float64)
    F = torch.exp(-2j * math.pi * t[:, None] * t[None, :] / s) / math.sqrt(s)
    Xhat = F @ X.to(torch.complex128)
    W1 = torch.complex(w["W1re"], w["W1im"])
    W2 = torch.complex(w["W2re"], w["W2im"])
    Hhat = torch.zeros(X.shape[0], s, C, dtype=torch.complex128)
    for j, l in enumerate(w["freq"].tolist()):
        term = (Xhat[:, l] @ W1[j])[:, None] * W2[j][None]
        Hhat[:, l] += term
        if 0 < l and 2 * l != s:  # mirrored frequency, conjugate weights
            Hhat[:, s - l] += (Xhat[:, s - l] @ W1[j].conj())[:, None] * W2[j].conj()[None]
    f = (F.conj().T @ Hhat).real
    return torch.einsum("ntc,t->nc", f, head.r)


@pytest.mark.parametrize("s", [5, 6])
def test_nonconvex_forward_matches_dense_dft(s):
    head = _head(s)
    w = head.init_nonconvex(7, generator=torch.Generator().manual_seed(1), scale=1.0)
    X = torch.randn(4, s, D, dtype=torch.float64)
    assert torch.allclose(head.nonconvex_forward(w, X), _literal_fno(head, w, X), atol=1e-10)


def test_mean_readout_only_sees_zero_frequency_and_first_readout_sees_all():
    s = 6
    X = torch.randn(5, s, D, dtype=torch.float64)
    mean_head, first_head = _head(s, readout="mean"), _head(s, readout="first")
    for head, used in ((mean_head, {0}), (first_head, {0, 1, 2, 3})):
        feats = head.features(X)
        for l in range(head.variable_shape()[0]):
            Z = torch.zeros(head.variable_shape(), dtype=torch.float64)
            Z[l] = torch.randn(2 * D, 2 * C, dtype=torch.float64)
            moved = head.apply(Z, feats).abs().max() > 1e-10
            assert moved == (l in used), (head.readout, l)


def test_shift_equivariance():
    """Rolling the tokens by k equals reading out the un-rolled output at token k."""
    s, k = 6, 2
    X = torch.randn(4, s, D, dtype=torch.float64)
    first = _head(s, readout="first")
    Zc = first.decode(torch.randn(first.variable_shape(), dtype=torch.float64))
    r = torch.zeros(s, dtype=torch.float64)
    r[k] = 1.0
    at_k = _head(s, readout=r)
    lhs = first.forward(first.encode(Zc), torch.roll(X, shifts=-k, dims=1))
    rhs = at_k.forward(at_k.encode(Zc), X)
    assert torch.allclose(lhs, rhs, atol=1e-10)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="readout"):
        get_head("fno", readout="max")
    with pytest.raises(ValueError, match="modes"):
        get_head("fno", modes=0)
    with pytest.raises(ValueError, match=r"shape \(s=6,\)"):
        get_head("fno", readout=torch.ones(5, dtype=torch.float64)).setup(D, C, s=6)
    with pytest.raises(ValueError, match="s=<number of tokens>"):
        get_head("fno").setup(D, C).variable_shape()
    head = _head(6)
    with pytest.raises(ValueError, match="s=6 tokens"):
        head.features(torch.randn(2, 5, D, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        head.features(torch.ones(2, 6, D, dtype=torch.int64))


@pytest.mark.parametrize("s,loss", [(6, "squared"), (5, "cross_entropy")])
def test_fista_matches_cvxpy_and_recovery_is_optimal(s, loss):
    from dualattn.convex import fit, nonconvex_objective

    n, beta = 12, 0.1
    X = torch.randn(n, s, D, dtype=torch.float64)
    y = torch.randint(0, C, (n,))
    ours = fit("fno", X, y, beta, loss=loss, tol=1e-7)
    ref = fit("fno", X, y, beta, loss=loss, solver="cvxpy")
    assert ours.status == "optimal"
    assert abs(ours.objective - ref.objective) <= 1e-4 * abs(ref.objective)
    module = ours.to_nonconvex()
    nc = float(nonconvex_objective(module, X, y, beta, loss=loss).detach())
    assert abs(nc - ours.objective) <= 1e-6 * abs(ours.objective)
    # the FISTA iterate stays on complex embeddings (projection changes nothing)
    assert torch.allclose(ours.Z, ours.head.encode(ours.head.decode(ours.Z)), atol=1e-12)
