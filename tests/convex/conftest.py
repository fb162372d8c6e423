"""Convex tests: float64, tiny problems, one BLAS thread (tiny matmuls are slower with 2 contended threads)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _make_data(n=16, s=4, d=3, c=2, seed=0, loss="squared"):
    """Small random problem: X (n, s, d) float64 and targets for ``loss``."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, s, d, generator=g, dtype=torch.float64)
    if loss == "squared":
        y = torch.randn(n, c, generator=g, dtype=torch.float64)
    else:
        y = torch.randint(0, c, (n,), generator=g)
    return X, y


@pytest.fixture
def make_data():
    """Factory fixture: ``make_data(n, s, d, c, seed, loss) -> (X, y)``."""
    return _make_data


def _make_scaled_data(loss, n=24, s=4, d=3, c=3, seed=0):
    """As :func:`_make_data` with tokens scaled by ``1/sqrt(d)`` (unit-norm-ish rows)."""
    X, y = _make_data(n, s, d, c, seed, loss)
    return X / d**0.5, y


@pytest.fixture
def scaled_data():
    """Factory fixture: ``scaled_data(loss, n=24, s=4, d=3, c=3, seed=0) -> (X / sqrt(d), y)``."""
    return _make_scaled_data


HEADS = [
    ("linear", {}),
    ("gated", {"num_gates": 2}),
    ("mixer-linear", {}),
    ("mixer-gated", {"num_gates": 2}),
    ("fno", {}),
]


@pytest.fixture(params=HEADS, ids=[name for name, _ in HEADS])
def head_case(request):
    """Every nuclear-norm head with small options: ``(name, head_options)``."""
    return request.param
