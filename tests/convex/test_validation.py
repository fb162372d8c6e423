"""Bad input gets a clear error naming the argument."""

import numpy as np
import pytest
import torch

from dualattn.convex import fit, get_head
from dualattn.convex.nonconvex import train_nonconvex


@pytest.fixture
def data(make_data):
    return make_data(n=8, s=3, d=3, c=2, seed=0)


def test_nan_and_inf_in_X(data):
    X, y = data
    Xn = X.clone()
    Xn[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="X contains NaN"):
        fit("linear", Xn, y, 0.1)
    Xn[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        fit("linear", Xn, y, 0.1)


def test_wrong_shapes(data):
    X, y = data
    with pytest.raises(ValueError, match=r"X must have shape \(n, s, d\)"):
        fit("linear", X[0], y, 0.1)
    with pytest.raises(ValueError, match="y must have n=8 rows"):
        fit("linear", X, y[:5], 0.1)
    with pytest.raises(ValueError, match=r"shape \(n,\) or \(n, c\)"):
        fit("linear", X, y[:, :, None], 0.1)
    with pytest.raises(TypeError, match="floating dtype"):
        fit("linear", X.long(), y, 0.1)
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        fit("linear", X.tolist(), y, 0.1)
    with pytest.raises(ValueError, match="Z0 must have shape"):
        fit("linear", X, y, 0.1, Z0=torch.zeros(1, 2, 2, dtype=torch.float64))
    head = get_head("linear").setup(3, 2)
    with pytest.raises(ValueError, match=r"X must have shape \(n, s, d=3\)"):
        head.forward(torch.zeros(1, 9, 6, dtype=torch.float64), torch.zeros(2, 3, 4, dtype=torch.float64))


def test_numpy_inputs_accepted(data):
    X, y = data
    f = fit("linear", X.numpy(), y.numpy(), 0.5, tol=1e-3)
    assert np.isfinite(f.objective)


@pytest.mark.parametrize("beta", [0, -1.0, float("nan"), float("inf")])
def test_bad_beta(data, beta):
    X, y = data
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        fit("linear", X, y, beta)


def test_bad_beta_type(data):
    X, y = data
    with pytest.raises(TypeError, match="beta must be a positive number"):
        fit("linear", X, y, "big")


def test_labels_out_of_range(data):
    X, _ = data
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 5])
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 4\)"):
        fit("linear", X, y, 0.1, loss="cross_entropy", num_classes=4)
    with pytest.raises(ValueError, match="labels y must lie in"):
        fit("linear", X, -y, 0.1, loss="cross_entropy")
    with pytest.raises(TypeError, match="integer class labels"):
        fit("linear", X, y.double(), 0.1, loss="cross_entropy")


def test_nan_targets(data):
    X, y = data
    y = y.clone()
    y[1, 0] = float("nan")
    with pytest.raises(ValueError, match="y contains NaN"):
        fit("linear", X, y, 0.1)


def test_bad_options(data):
    X, y = data
    with pytest.raises(ValueError, match="solver must be one of"):
        fit("linear", X, y, 0.1, solver="adam")
    with pytest.raises(ValueError, match="loss must be one of"):
        fit("linear", X, y, 0.1, loss="hinge")
    with pytest.raises(ValueError, match="unknown head"):
        fit("softmax", X, y, 0.1)
    with pytest.raises(ValueError, match="tol must be > 0"):
        fit("linear", X, y, 0.1, tol=0)
    with pytest.raises(ValueError, match="num_gates must be a positive int"):
        get_head("gated", num_gates=0)
    with pytest.raises(ValueError, match="decomposition must be"):
        get_head("relu", decomposition="magic")
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        fit("linear", X, y, 0.1, chunk_size=0)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train_nonconvex("linear", X, y, 0.1, steps=0)
    with pytest.raises(RuntimeError, match="call setup"):
        get_head("linear").variable_shape()


def test_failed_setup_leaves_head_unchanged():
    head = get_head("mlp-relu-cone", num_gates=2)
    with pytest.raises(ValueError, match="scalar outputs only"):
        head.setup(3, 2)
    assert head.d is None
    head.setup(3, 1)
    assert head.variable_shape() == (4, 3, 1)
