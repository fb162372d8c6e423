"""Interpretation: spectrum / heads used, token similarity, planted token clusters, plots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from dualattn.convex import interpret as I
from dualattn.convex.heads import get_head


def _linear_Z(head, W1s, W2s):
    """Lift nonconvex linear-attention weights into ``Z`` (inverse of the head's ``unlift``)."""
    a = torch.stack([W1.T.reshape(-1) for W1 in W1s])
    b = torch.stack([W2.reshape(-1) for W2 in W2s])
    return (a.T @ b)[None]


def _planted_tokens(n=6, s=10, d=4, seed=0):
    """Tokens of group 0 live along e0, of group 1 along e1 (random signs and scales, small noise)."""
    g = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 2, (n, s), generator=g)
    groups[:, 0], groups[:, 1] = 0, 1
    X = 0.02 * torch.randn(n, s, d, generator=g, dtype=torch.float64)
    scale = (1.0 + torch.rand(n, s, generator=g, dtype=torch.float64)) * torch.where(
        torch.rand(n, s, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    X[..., 0] += torch.where(groups == 0, scale, torch.zeros_like(scale))
    X[..., 1] += torch.where(groups == 1, scale, torch.zeros_like(scale))
    return X, groups.numpy()


def test_planted_clusters_are_recovered_from_linear_attention_head():
    d, c = 4, 2
    X, groups = _planted_tokens(d=d)
    head = get_head("linear").setup(d, c)
    W1 = torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))  # x_t^T W1 x_u: same-subspace tokens
    W2 = torch.randn(d, c, dtype=torch.float64)
    Z = _linear_Z(head, [W1], [W2])
    labels = I.token_clusters((head, Z), X, n_clusters=2)
    assert labels.shape == groups.shape and labels.dtype == np.int64
    for i in range(len(groups)):
        assert adjusted_rand_score(groups[i], labels[i]) == 1.0
    # the sign of a head is not identifiable: (-W1, -W2) gives the same clusters
    assert np.array_equal(I.token_clusters((head, _linear_Z(head, [-W1], [-W2])), X, 2), labels)


def test_similarity_definitions():
    d, c, s = 3, 2, 5
    X = torch.randn(4, s, d, dtype=torch.float64)
    head = get_head("linear").setup(d, c)
    W1, W2 = torch.randn(d, d, dtype=torch.float64), torch.randn(d, c, dtype=torch.float64)
    S, sigma = I.token_similarity((head, _linear_Z(head, [W1], [W2])), X)
    assert S.shape == (4, 1, s, s)
    # balanced recovery: S is X W1 X^T up to the rescaling W1 -> W1 * sqrt(|W2| / |W1|)
    ref = X @ W1 @ X.transpose(1, 2)
    ratio = (S[:, 0] / ref).flatten()
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-8)
    assert torch.allclose(sigma, (W1.norm() * W2.norm()).reshape(1))
    # mixer: the token-mixing matrix itself, identical for every sample
    mix = get_head("mixer-linear").setup(d, c, s=s)
    Zm = torch.randn(mix.variable_shape(), dtype=torch.float64)
    Sm, _ = I.token_similarity((mix, Zm), X)
    assert torch.allclose(Sm[0], Sm[-1])
    assert torch.allclose(Sm[0, :, 0], Sm[0, :, -1])  # every row of W1j = 1 a_j^T / sqrt(s) is equal


def test_spectrum_and_effective_rank_count_planted_heads():
    s, d, c = 3, 2, 2
    head = get_head("mixer-gated", num_gates=3).setup(d, c, s=s)
    P, p, q = head.variable_shape()
    Z = torch.zeros(P, p, q, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for blk, r in ((0, 2), (2, 1)):  # planted ranks 2 and 1 -> 3 heads
        Z[blk] = torch.randn(p, r, generator=g, dtype=torch.float64) @ torch.randn(r, q, generator=g, dtype=torch.float64)
    sigma, block = I.spectrum((head, Z))
    assert I.effective_rank((head, Z), tol=1e-6) == 3
    assert torch.all(sigma[:-1] >= sigma[1:])
    assert sorted(block[:3].tolist()) == [0, 0, 2]
    assert torch.allclose(sigma.sum(), head.penalty(Z))


def test_fno_spectrum_counts_complex_heads_once():
    """A rank-one complex block is one head, although its real embedding has rank two."""
    s, d, c = 6, 3, 2
    head = get_head("fno").setup(d, c, s=s)
    Zc = torch.zeros(head.variable_shape()[0], d, c, dtype=torch.complex128)
    u = torch.randn(d, dtype=torch.complex128)
    v = torch.randn(c, dtype=torch.complex128)
    Zc[1] = u[:, None] * v[None, :]
    Z = head.encode(Zc)
    assert I.effective_rank((head, Z), tol=1e-8) == 1
    X = torch.randn(2, s, d, dtype=torch.float64)
    S, _ = I.token_similarity((head, Z), X)
    assert S.shape == (2, 1, s, s)
    assert torch.allclose(S, S.transpose(-1, -2))  # Re(h h^H) is symmetric
    # an FNO head at frequency l is a rank-one similarity per sample
    assert torch.linalg.matrix_rank(S[0, 0]) <= 2


def test_plots_write_files(tmp_path):
    labels = np.random.default_rng(0).integers(0, 3, size=(3, 6))
    I.plot_token_clusters(labels, grid=(2, 3), path=tmp_path / "grid.png")
    I.plot_token_clusters(labels, grid=(2, 3), images=torch.rand(3, 3, 20, 30), path=tmp_path / "img.png")
    I.plot_token_clusters(labels, sequences=torch.randn(3, 6, 2), path=tmp_path / "seq.png")
    head = get_head("mixer-linear").setup(2, 2, s=3)
    I.plot_spectrum((head, torch.randn(head.variable_shape(), dtype=torch.float64)), tmp_path / "spec.png")
    for name in ("grid", "img", "seq", "spec"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_bad_input_errors():
    labels = np.zeros((2, 6), dtype=np.int64)
    with pytest.raises(ValueError, match="grid"):
        I.plot_token_clusters(labels, grid=(2, 2))
    with pytest.raises(ValueError, match="integer array"):
        I.plot_token_clusters(labels.astype(float), grid=(2, 3))
    with pytest.raises(TypeError, match="ConvexFit"):
        I.spectrum(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="n_clusters"):
        I.cluster_affinity(torch.ones(4, 4), 5)
    with pytest.raises(ValueError, match="nonnegative"):
        I.cluster_affinity(-torch.ones(4, 4), 2)
    head = get_head("linear").setup(3, 2)
    with pytest.raises(ValueError, match="tol"):
        I.effective_rank((head, torch.zeros(head.variable_shape(), dtype=torch.float64)), tol=1.5)
    with pytest.raises(ValueError, match=r"\(n, s, d=3\)"):
        I.token_similarity((head, torch.zeros(head.variable_shape(), dtype=torch.float64)), torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="no heads"):
        I.token_clusters((head, torch.zeros(head.variable_shape(), dtype=torch.float64)),
                         torch.randn(2, 4, 3, dtype=torch.float64), 2)
