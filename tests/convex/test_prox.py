"""Analytic properties of the prox operators and norms."""

import pytest
import torch

from dualattn.convex.prox import group_prox, nuclear_norm, nuclear_prox, spectral_norm


def _rand(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 6, 1), (1, 4, 4)])
def test_prox_zero_t_is_identity(shape):
    Z = _rand(shape)
    assert torch.allclose(nuclear_prox(Z, 0.0), Z, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 6, 1)])
def test_prox_large_t_is_zero(shape):
    Z = _rand(shape)
    t = float(spectral_norm(Z)) + 1e-9  # the smallest t giving exactly zero
    assert torch.count_nonzero(nuclear_prox(Z, t)) == 0
    assert torch.count_nonzero(nuclear_prox(Z, 0.9 * t)) > 0


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 6, 1)])
def test_prox_nonexpansive_and_firmly(shape):
    for seed in range(5):
        A, B = _rand(shape, seed), _rand(shape, seed + 100)
        t = 0.7
        PA, PB = nuclear_prox(A, t), nuclear_prox(B, t)
        # firm nonexpansiveness: ||PA - PB||^2 <= <PA - PB, A - B>
        lhs = ((PA - PB) ** 2).sum()
        assert lhs <= ((PA - PB) * (A - B)).sum() + 1e-10
        assert (PA - PB).norm() <= (A - B).norm() + 1e-12


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 6, 1)])
def test_prox_optimality_conditions(shape):
    """U = prox_{tR}(Z) iff (Z - U)/t is a subgradient of R at U: dual norm <= 1 and <., U> = R(U)."""
    Z, t = _rand(shape, 3), 0.8
    U, R = nuclear_prox(Z, t, return_penalty=True)
    G = (Z - U) / t
    assert torch.isclose(R, nuclear_norm(U), rtol=1e-10)
    for g in range(shape[0]):
        assert float(spectral_norm(G[g : g + 1])) <= 1 + 1e-9
    assert torch.isclose((G * U).sum(), nuclear_norm(U), rtol=1e-9)


def test_group_prox_matches_nuclear_for_vectors():
    Z = _rand((4, 5, 1))
    assert torch.allclose(group_prox(Z, 0.5), nuclear_prox(Z, 0.5), atol=1e-12)
    U = group_prox(Z, 0.5)
    # block soft-thresholding shrinks every norm by exactly t (or to zero)
    n0, n1 = Z.flatten(1).norm(dim=1), U.flatten(1).norm(dim=1)
    assert torch.allclose(n1, torch.clamp(n0 - 0.5, min=0), atol=1e-12)


def test_dual_norm_holder_inequality():
    for seed in range(5):
        A, B = _rand((3, 4, 5), seed), _rand((3, 4, 5), seed + 7)
        assert abs(float((A * B).sum())) <= float(nuclear_norm(A) * spectral_norm(B)) + 1e-10


def test_prox_bad_input():
    with pytest.raises(ValueError, match="t must be"):
        nuclear_prox(_rand((1, 2, 2)), -1.0)
    with pytest.raises(ValueError, match=r"\(P, p, q\)"):
        nuclear_prox(_rand((2, 2)), 1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        nuclear_norm([[1.0]])
