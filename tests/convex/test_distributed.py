"""Data-parallel factorised solve: 2 gloo processes on shards = 1 process on the concatenated data."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dualattn.convex import fit


def _data(loss, n=40, s=4, d=3, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, s, d, generator=g, dtype=torch.float64) / d**0.5
    y = torch.randn(n, c, generator=g, dtype=torch.float64) if loss == "squared" else torch.randint(0, c, (n,), generator=g)
    return X, y


CASES = [("squared", 0.2), ("cross_entropy", 0.05)]


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for loss, beta in CASES:
            X, y = _data(loss)
            shard = slice(rank * X.shape[0] // world, (rank + 1) * X.shape[0] // world)
            f = fit("linear", X[shard], y[shard], beta, loss=loss, solver="auto", tol=1e-5)
            A, B = f.factors
            torch.save({"objective": f.objective, "dual": f.dual_objective, "status": f.status, "A": A, "B": B,
                        "solver": f.solver, "world": f.info["world_size"]},
                       os.path.join(out_dir, f"{loss}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        yield {loss: [torch.load(os.path.join(tmp, f"{loss}-rank{k}.pt")) for k in range(2)] for loss, _ in CASES}


@pytest.mark.slow
@pytest.mark.parametrize("loss,beta", CASES)
def test_two_processes_equal_one(two_process_results, loss, beta):
    X, y = _data(loss)
    single = fit("linear", X, y, beta, loss=loss, solver="factorised", tol=1e-5)
    r0, r1 = two_process_results[loss]
    assert r0["solver"] == "factorised" and r0["world"] == 2
    assert r0["status"] == r1["status"] == "optimal"
    # every process holds the same factors and certificate
    assert torch.equal(r0["A"], r1["A"]) and torch.equal(r0["B"], r1["B"])
    assert r0["objective"] == r1["objective"] and r0["dual"] == r1["dual"]
    # and the same program as one process on all the data
    assert abs(r0["objective"] - single.objective) <= 1e-6 * abs(single.objective)
    assert r0["dual"] <= single.objective + 1e-9 and single.dual_objective <= r0["objective"] + 1e-9
    Z2 = r0["A"] @ r0["B"].transpose(1, 2)
    assert torch.allclose(single.predict(X), single.head.forward(Z2, X), atol=1e-3)
