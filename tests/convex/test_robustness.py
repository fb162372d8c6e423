"""Robustness (issue 9 item 7): CVXPY size guard and certified status, float64 re-certification,
fit_path checkpoint fingerprints, label sets with gaps."""

import numpy as np
import pytest
import torch

from dualattn.convex import fit, fit_path
from dualattn.convex.api import _certify_float64, _prepare
from dualattn.convex.heads import get_head
from dualattn.convex.losses import get_loss
from dualattn.convex.operator import ChunkedOperator
from dualattn.convex.solvers.cvxpy_ref import estimate_cvxpy_size
from dualattn.convex.solvers.result import SolveResult


# ---------------------------------------------------------------- (a) CVXPY size guard
def test_cvxpy_refuses_a_problem_that_would_abort_the_process():
    # the reported crash: n=2000, d=12 (Clarabel aborted on a 1 GB allocation, rc 134)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 4, 12, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (2000,), generator=g)
    with pytest.raises(ValueError, match=r"GiB.*solver='admm' or solver='fista'.*cvxpy_max_gb=None"):
        fit("linear", X, y, 0.1, solver="cvxpy")
    with pytest.raises(ValueError, match=r"use solver='fista'"):  # cross-entropy: admm not suggested
        fit("linear", X, y, 0.1, solver="cvxpy", loss="cross_entropy")


def test_cvxpy_size_estimate_and_override(make_data):
    loss = get_loss("squared")
    sizes = []
    for d in (3, 6, 12):
        head = get_head("linear").setup(d, 2)
        X, _ = make_data(n=50, s=3, d=d, c=2, seed=d)
        sizes.append(estimate_cvxpy_size(ChunkedOperator(head, X), loss))
    assert all(a["memory_gb"] < b["memory_gb"] for a, b in zip(sizes, sizes[1:]))
    assert sizes[1]["psd_order"] == 36 + 12 and sizes[1]["nonzeros"] >= 100 * 36 * 12
    scs = estimate_cvxpy_size(ChunkedOperator(get_head("linear").setup(12, 2), X), loss, "SCS")
    assert scs["memory_gb"] < sizes[2]["memory_gb"]  # first-order: no dense PSD blocks
    X, y = make_data(n=12, s=3, d=2, c=2, seed=1)
    with pytest.raises(ValueError, match="cvxpy_max_gb=1e-09"):
        fit("linear", X, y, 0.3, solver="cvxpy", cvxpy_max_gb=1e-9)
    assert fit("linear", X, y, 0.3, solver="cvxpy", cvxpy_max_gb=None).status == "optimal"


# ---------------------------------------------------- (b) CVXPY status from our certificate
def test_cvxpy_status_comes_from_our_certificate(make_data):
    X, y = make_data(n=12, s=3, d=2, c=2, seed=2)
    ok = fit("linear", X, y, 0.3, solver="cvxpy", tol=1e-4)
    assert ok.status == "optimal" and ok.rel_gap <= 1e-4 and ok.info["cvxpy_status"] == "optimal"
    # CVXPY still says "optimal", but its point is not certified to 1e-15
    strict = fit("linear", X, y, 0.3, solver="cvxpy", tol=1e-15)
    assert strict.info["cvxpy_status"] == "optimal"
    assert strict.rel_gap > 1e-15 and strict.status == "inaccurate"


# --------------------------------------------------- (c) float64 re-certification status
def _result(head, X, Y, beta, Z, status):
    return SolveResult(Z=Z, objective=0.0, dual_objective=0.0, gap=0.0, rel_gap=0.0, iterations=1, time=0.0,
                       status=status, solver="fista")


def test_float64_recertification_recomputes_status(make_data):
    X, y = make_data(n=20, s=3, d=3, c=2, seed=3)
    exact = fit("linear", X, y, 0.3, tol=1e-9, solver="admm")
    head, lossf, beta, X32, Y32 = _prepare("linear", X, y, 0.3, "squared", None, torch.float32, "cpu", None)
    # a float32 solve that claimed "optimal" at Z = 0 (far from optimal): not certified in float64
    res = _result(head, X32, Y32, beta, torch.zeros(head.variable_shape(), dtype=torch.float32), "optimal")
    _certify_float64(head, lossf, beta, res, X32, Y32, 4096, torch.float32, "cpu", 1e-4)
    assert res.rel_gap > 1e-4 and res.status == "inaccurate" and res.info["status_lowprec"] == "optimal"
    # a solve stopped at max_iter whose point IS certified in float64 becomes optimal
    res = _result(head, X32, Y32, beta, exact.Z.float(), "max_iter")
    _certify_float64(head, lossf, beta, res, X32, Y32, 4096, torch.float32, "cpu", 1e-4)
    assert res.rel_gap <= 1e-4 and res.status == "optimal"
    # end to end: the reported status always agrees with the float64 gap
    f32 = fit("linear", X, y, 0.3, tol=1e-5, dtype=torch.float32, max_iter=200)
    assert f32.info["certified_float64"] and (f32.status == "optimal") == (f32.rel_gap <= 1e-5)


# ------------------------------------------------------ (d) fit_path checkpoint fingerprint
def test_fit_path_refuses_a_checkpoint_for_another_problem(make_data, tmp_path):
    X, y = make_data(n=12, s=3, d=2, c=2, seed=4)
    betas = [0.5, 0.2]
    ck = tmp_path / "path.pt"
    first = fit_path("linear", X, y, betas, tol=1e-6, checkpoint=ck)
    again = fit_path("linear", X, y, betas, tol=1e-6, checkpoint=ck)  # same problem: resumes
    assert [a.objective for a in again] == pytest.approx([f.objective for f in first], rel=1e-6)
    y2 = y.clone()
    y2[0, 0] += 1.0
    X2 = X.clone()
    X2[3, 1, 0] -= 1e-3
    cases = [
        (dict(X=X2), "X_sha256"),
        (dict(y=y2), "y_sha256"),
        (dict(betas=[0.5, 0.1]), "betas"),
        (dict(head="gated", head_options={"num_gates": 2}), "head"),
        (dict(head_options={"seed": 3}), "head_config"),
        (dict(y=(y[:, 0] > 0).long(), loss="cross_entropy"), "loss"),
    ]
    for change, key in cases:
        kw = dict(head="linear", X=X, y=y, betas=betas) | change
        with pytest.raises(ValueError, match=rf"path\.pt.*different problem.*{key}"):
            fit_path(kw.pop("head"), kw.pop("X"), kw.pop("y"), kw.pop("betas"), tol=1e-6, checkpoint=ck, **kw)
    # the refused runs left the checkpoint untouched
    assert fit_path("linear", X, y, betas, tol=1e-6, checkpoint=ck)[0].objective == pytest.approx(
        first[0].objective, rel=1e-6)


def test_fit_path_names_a_corrupt_or_foreign_checkpoint(make_data, tmp_path):
    X, y = make_data(n=12, s=3, d=2, c=2, seed=5)
    ck = tmp_path / "path.pt"
    fit_path("linear", X, y, [0.5, 0.2], tol=1e-6, checkpoint=ck)
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])  # truncated (killed while copying, disk full, ...)
    with pytest.raises(ValueError, match=r"path\.pt.*corrupt or truncated"):
        fit_path("linear", X, y, [0.5, 0.2], tol=1e-6, checkpoint=ck)
    old = tmp_path / "old.pt"
    torch.save({0.5: {"Z": torch.zeros(1, 4, 4)}}, old)  # the previous, unfingerprinted format
    with pytest.raises(ValueError, match=r"old\.pt.*not a dualattn.fit_path/2 checkpoint"):
        fit_path("linear", X, y, [0.5, 0.2], tol=1e-6, checkpoint=old)
    assert not list(tmp_path.glob("*.tmp"))  # atomic saves leave no temporary file


# ----------------------------------------------------------------- (e) labels with gaps
@pytest.mark.parametrize("loss", ["squared", "cross_entropy"])
def test_labels_with_gaps_need_num_classes(make_data, loss):
    X, _ = make_data(n=12, s=3, d=2, c=2, seed=6)
    y = torch.tensor([0, 1, 5] * 4)
    with pytest.raises(ValueError, match=r"classes 2, 3, 4 never occur; pass num_classes=6.*remap"):
        fit("linear", X, y, 0.3, loss=loss)
    with pytest.raises(ValueError, match="never occur"):
        fit("linear", X, np.array([1, 2] * 6), 0.3, loss=loss)  # class 0 missing
    f = fit("linear", X, y, 0.3, loss=loss, num_classes=6, tol=1e-3)  # explicit: 6 classes, on purpose
    assert f.head.c == 6
    _, inv = np.unique(y.numpy(), return_inverse=True)  # or remap to 0..2
    assert fit("linear", X, torch.as_tensor(inv), 0.3, loss=loss, tol=1e-3).head.c == 3
