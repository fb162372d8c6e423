"""Head operators: linearity, adjoints, block layout, recovery."""

import pytest
import torch

from dualattn.convex.heads import HEADS, ConvexHead, get_head, register_head
from dualattn.convex.heads.base import ConvexHead as Base

MINE = {"linear": {}, "gated": {"num_gates": 3}, "relu": {"num_gates": 3}, "mlp-gated": {"num_gates": 4},
        "mlp-relu": {"num_gates": 4}}


def _setup(name, d=3, c=2, n=7, s=4, seed=0):
    head = get_head(name, **MINE[name]).setup(d, c)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, s, d, generator=g, dtype=torch.float64)
    Z = torch.randn(head.variable_shape(), generator=g, dtype=torch.float64)
    V = torch.randn(n, c, generator=g, dtype=torch.float64)
    return head, X, Z, V


def test_registry_has_core_heads():
    for name in MINE:
        assert name in HEADS and issubclass(HEADS[name], ConvexHead)
    # every head reports its own registered name (subclasses of a registered head too: mlp-relu, mlp-relu-cone)
    assert all(cls.name == name for name, cls in HEADS.items())
    with pytest.raises(ValueError, match="unknown head"):
        get_head("nope")
    with pytest.raises(TypeError, match="ConvexHead subclass"):
        register_head("x")(int)


@pytest.mark.parametrize("name,s", [(name, 4) for name in MINE] + [("mlp-gated", 1), ("mlp-relu", 1)])
def test_apply_linear_and_adjoint(name, s):
    """(s = 1: the MLP heads keep x and the gate mask instead of M; same operator.)"""
    head, X, Z, V = _setup(name, s=s)
    f = head.features(X)
    Z2 = torch.randn_like(Z)
    assert torch.allclose(head.apply(2 * Z - 3 * Z2, f), 2 * head.apply(Z, f) - 3 * head.apply(Z2, f), atol=1e-10)
    lhs = (head.apply(Z, f) * V).sum()
    rhs = (head.adjoint(V, f) * Z).sum()
    assert torch.isclose(lhs, rhs, rtol=1e-10)
    # explicit adjoint equals the generic autograd one
    assert torch.allclose(head.adjoint(V, f), Base.adjoint(head, V, f), atol=1e-10)
    # design matrix (CVXPY path) reproduces apply
    M = head.design_matrix(f)
    assert torch.allclose((M @ Z.reshape(-1)).reshape(-1, head.c), head.apply(Z, f), atol=1e-10)


@pytest.mark.parametrize("name", ["linear", "gated", "mlp-gated"])
def test_recovery_is_exact(name):
    """SVD recovery: nonconvex outputs equal convex outputs and weight decay equals R(Z)."""
    head, X, Z, _ = _setup(name)
    w = head.recover(Z)
    assert torch.allclose(head.nonconvex_forward(w, X), head.forward(Z, X), atol=1e-10)
    assert torch.isclose(head.nonconvex_penalty(w), head.penalty(Z), rtol=1e-10)
    P, p, q = head.variable_shape()
    assert w["W1"].shape[0] <= P * min(p, q)


def test_linear_block_layout_by_hand():
    """Z[k*d + a, l*c + e] = sum_j W1j[a, k] W2j[l, e] makes the lifted model equal the attention head."""
    d, c, m = 3, 2, 4
    head = get_head("linear").setup(d, c)
    g = torch.Generator().manual_seed(1)
    W1 = torch.randn(m, d, d, generator=g, dtype=torch.float64)
    W2 = torch.randn(m, d, c, generator=g, dtype=torch.float64)
    Z = torch.zeros(1, d * d, d * c, dtype=torch.float64)
    for j in range(m):
        for k in range(d):
            for a in range(d):
                for l in range(d):
                    for e in range(c):
                        Z[0, k * d + a, l * c + e] += W1[j, a, k] * W2[j, l, e]
    X = torch.randn(5, 6, d, generator=g, dtype=torch.float64)
    direct = torch.stack([(Xi @ W1[j] @ Xi.T @ Xi @ W2[j]).mean(0) for Xi in X for j in range(m)]).reshape(5, m, c).sum(1)
    assert torch.allclose(head.forward(Z, X), direct, atol=1e-10)
    assert torch.allclose(head.nonconvex_forward({"W1": W1, "W2": W2}, X), direct, atol=1e-10)
    # the recovered weights of this Z reproduce it
    w = head.recover(Z)
    Zr = torch.einsum("jak,jle->kale", w["W1"], w["W2"]).reshape(1, d * d, d * c)
    assert torch.allclose(Zr, Z, atol=1e-10)


def test_gated_reduces_to_linear_with_all_ones_gate():
    """With gates that are always open the gated statistic equals xbar (x) G."""
    d, c = 3, 2
    gated = get_head("gated", num_gates=1).setup(d, c)
    X = torch.rand(6, 4, d, dtype=torch.float64) + 0.1  # positive tokens
    gated.H = torch.ones(1, d, d, dtype=torch.float64)  # x^T 1 1^T y > 0: gate always 1
    lin = get_head("linear").setup(d, c)
    Z = torch.randn(gated.variable_shape(), dtype=torch.float64)
    assert torch.allclose(gated.forward(Z, X), lin.forward(Z, X), atol=1e-10)


def test_gates_are_seeded_and_stable():
    a = get_head("gated", num_gates=3, seed=5).setup(4, 2)
    b = get_head("gated", num_gates=3, seed=5).setup(4, 2)
    assert torch.equal(a.H, b.H)
    H = a.H.clone()
    a.setup(4, 2, dtype=torch.float32)  # same dims: gates kept, only cast
    assert torch.allclose(a.H.double(), H, atol=1e-6)
    c = get_head("gated", num_gates=3, seed=6).setup(4, 2)
    assert not torch.equal(a.H.double(), c.H)


@pytest.mark.parametrize("name", ["relu", "mlp-relu"])
@pytest.mark.parametrize("method", ["min-norm", "closed-form"])
def test_relu_cone_decomposition_reproduces_gated_outputs(name, method):
    opts = MINE[name] | {"decomposition": method}
    head = get_head(name, **opts).setup(3, 2)
    g = torch.Generator().manual_seed(2)
    X = torch.randn(6, 4, 3, generator=g, dtype=torch.float64)
    Z = torch.randn(head.variable_shape(), generator=g, dtype=torch.float64)
    w = head.recover(Z, X=X)
    assert torch.allclose(head.nonconvex_forward(w, X), head.forward(Z, X), atol=1e-8)
    # a split never costs less weight decay than the gated factors
    assert head.nonconvex_penalty(w) >= head.penalty(Z) - 1e-9
    with pytest.raises(ValueError, match="needs the training inputs"):
        head.recover(Z)


def test_min_norm_split_is_cheaper_and_fallback_is_exact():
    from dualattn.convex.cone import relu_split
    from dualattn.convex.heads.gated import attention_constraints

    head = get_head("gated", num_gates=2).setup(3, 2)
    g = torch.Generator().manual_seed(4)
    X = torch.randn(5, 3, 3, generator=g, dtype=torch.float64)
    Z = torch.randn(head.variable_shape(), generator=g, dtype=torch.float64)
    w = head.recover(Z)
    relu = get_head("relu", num_gates=2).setup(3, 2)
    out = head.forward(Z, X)
    pens = {}
    for method, max_rows in [("min-norm", 10**6), ("closed-form", 10**6), ("min-norm", 1)]:
        W1, W2 = relu_split(X, attention_constraints, w["W1"], w["H"], w["W2"], method=method, max_socp_rows=max_rows)
        wr = {"W1": W1, "W2": W2}
        assert torch.allclose(relu.nonconvex_forward(wr, X), out, atol=1e-8)
        pens[(method, max_rows)] = float(relu.nonconvex_penalty(wr))
    assert pens[("min-norm", 10**6)] <= pens[("closed-form", 10**6)] + 1e-9
    assert pens[("min-norm", 1)] == pytest.approx(pens[("closed-form", 10**6)])  # fallback = closed form


def test_cone_head_operators_and_repair():
    from dualattn.convex.operator import ChunkedOperator

    head = get_head("mlp-relu-cone", num_gates=3).setup(3, 1)
    g = torch.Generator().manual_seed(5)
    X = torch.randn(7, 2, 3, generator=g, dtype=torch.float64)
    Z = torch.randn(head.variable_shape(), generator=g, dtype=torch.float64)
    f = head.features(X)
    V = torch.randn(7, 1, generator=g, dtype=torch.float64)
    assert torch.isclose((head.apply(Z, f) * V).sum(), (head.adjoint(V, f) * Z).sum(), rtol=1e-10)
    Lam = torch.randn(7, 2, 6, generator=g, dtype=torch.float64)
    assert torch.isclose((head.constraints(Z, f) * Lam).sum(), (head.constraints_adjoint(Lam, f) * Z).sum(), rtol=1e-10)
    Zr = head.repair(Z, ChunkedOperator(head, X))
    assert float(head.constraints(Zr, f).min()) >= -1e-12  # feasible
    assert torch.allclose(head.apply(Zr, f), head.apply(Z, f), atol=1e-10)  # same outputs
    w = head.recover(Zr)
    assert torch.allclose(head.nonconvex_forward(w, X), head.apply(Zr, f), atol=1e-10)
    assert torch.isclose(head.nonconvex_penalty(w), head.penalty(Zr), rtol=1e-10)


def test_attention_preacts_match_explicit_rows():
    from dualattn.convex.cone import rows_preacts
    from dualattn.convex.heads.gated import attention_constraints, attention_preacts

    g = torch.Generator().manual_seed(6)
    X = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    W = torch.randn(5, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(attention_preacts(X, W), rows_preacts(attention_constraints)(X, W), atol=1e-12)


@pytest.mark.parametrize("name,s", [("mlp-gated", 1), ("mlp-gated", 4), ("mixer-linear", 4), ("linear", 4)])
def test_channel_features_are_the_design_rows(name, s):
    """``channel_features`` (used by admm) is ``Phi`` with ``A(Z)_i[e] = <Phi_i, Z.reshape(-1, c)[:, e]>``."""
    opts = {"num_gates": 4} if name == "mlp-gated" else {}
    head = get_head(name, **opts).setup(3, 2, s=s) if name == "mixer-linear" else get_head(name, **opts).setup(3, 2)
    g = torch.Generator().manual_seed(3)
    X = torch.randn(7, s, 3, generator=g, dtype=torch.float64)
    Z = torch.randn(head.variable_shape(), generator=g, dtype=torch.float64)
    f = head.features(X)
    Phi = head.channel_features(f)
    if name == "linear":  # no ready-made matrix: admm builds it column by column
        assert Phi is None
        return
    assert Phi.shape == (7, Z.numel() // 2)
    assert torch.allclose(Phi @ Z.reshape(-1, 2), head.apply(Z, f), atol=1e-12)
