"""`dualattn convex ...` commands: heads, fit (files + certificate), bench --quick."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dualattn.cli import app

runner = CliRunner()


def test_heads_lists_mixer_and_fno():
    res = runner.invoke(app, ["convex", "heads"])
    assert res.exit_code == 0, res.output
    for name in ("mixer-linear", "mixer-gated", "fno", "linear"):
        assert name in res.output


def test_fit_synthetic_writes_certified_solution(tmp_path):
    out = tmp_path / "fit"
    res = runner.invoke(app, ["convex", "fit", "mixer-gated", "--n", "24", "--s", "4", "--d", "2", "--c", "3",
                              "-o", "num_gates=2", "--tol", "1e-5", "--clusters", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["head"] == "mixer-gated" and summary["status"] == "optimal"
    assert summary["rel_gap"] <= 1e-5
    assert 0 < summary["heads_used"] and 0.0 <= summary["test_acc"] <= 1.0
    saved = torch.load(out / "Z.pt", weights_only=False)
    assert saved["Z"].shape == (2, 16, 6) and saved["head_options"] == {"num_gates": 2}
    for name in ("spectrum.png", "clusters.png", "history.csv"):
        assert (out / name).stat().st_size > 0


def test_fit_npz_patch_grid(tmp_path):
    """A (n, h, w, d) array is read as an h x w patch grid (clusters drawn over the grid)."""
    g = np.random.default_rng(0)
    path = tmp_path / "feats.npz"
    np.savez(path, X=g.normal(size=(30, 2, 3, 4)), y=g.integers(0, 2, size=30))
    out = tmp_path / "npz"
    res = runner.invoke(app, ["convex", "fit", "fno", "--data", str(path), "--loss", "squared", "--clusters", "2",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["s"] == 6 and summary["d"] == 4 and "test_acc" not in summary
    assert (out / "clusters.png").exists()


def test_fit_bad_input(tmp_path):
    res = runner.invoke(app, ["convex", "fit", "mixer-gated", "-o", "num_gates=0", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "num_gates" in res.output
    res = runner.invoke(app, ["convex", "fit", "nope", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "unknown head" in res.output
    res = runner.invoke(app, ["convex", "fit", "linear", "--data", "no-such-data", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "unknown --data" in res.output


@pytest.mark.slow
def test_bench_quick(tmp_path):
    res = runner.invoke(app, ["convex", "bench", "--quick", "--sizes", "24", "--cvxpy-solvers", "SCS",
                              "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(tmp_path / "convex_solvers_quick.csv")))
    solvers = {r["solver"] for r in rows}
    assert {"fista (ours)", "cvxpy-scs"} <= solvers
    for r in rows:
        if r["status"] == "optimal":
            assert float(r["rel_gap"]) <= 1e-4 and float(r["time_s"]) > 0
    # same problem, same optimum (within the certified gaps)
    att = [r for r in rows if r["problem"] == "attention" and r["status"] == "optimal"]
    objs = [float(r["objective"]) for r in att]
    assert max(objs) - min(objs) <= 2e-4 * max(objs)
    # the MLP problem: our certified run and, from the same run, its first iterate at the target
    mlp = {r["solver"]: r for r in rows if r["problem"] == "mlp"}
    cert, at = mlp["fista (ours)"], mlp["fista (ours) at target"]
    assert float(at["time_s"]) <= float(cert["time_s"]) and int(at["iterations"]) <= int(cert["iterations"])
    assert float(at["rel_gap"]) <= 1e-4
    assert (tmp_path / "convex_solvers_quick.png").stat().st_size > 0
    assert "speedup" in (tmp_path / "convex_solvers_quick.md").read_text()


@pytest.mark.slow
def test_bench_runs_from_an_installed_copy_without_the_source_tree(tmp_path):
    """`dualattn convex bench` needs only the package: copy it alone onto the path, run from an empty cwd."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import dualattn

    site = tmp_path / "site"
    shutil.copytree(Path(dualattn.__file__).parent, site / "dualattn",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", "import sys; from dualattn.cli import main; sys.argv[0] = 'dualattn'; main()",
           "convex", "bench", "--quick", "--sizes", "24", "--skip", "mlp", "--cvxpy-solvers", "SCS"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = cwd / "benchmarks" / "results"  # default --out is relative to the current directory
    rows = list(csv.DictReader(open(out / "convex_solvers_quick.csv")))
    assert {r["solver"] for r in rows} == {"fista (ours)", "cvxpy-scs"}
    assert all(r["status"] == "optimal" and float(r["rel_gap"]) <= 1e-4 for r in rows)  # the CVXPY child ran too
    assert (out / "convex_solvers_quick.md").read_text().startswith("Command: `dualattn convex bench --quick")


def test_fit_npz_labels_with_gaps_are_remapped(tmp_path):
    """Labels {0, 1, 5} are 3 classes, not 6 (max + 1): remapped in sorted order and recorded."""
    g = np.random.default_rng(1)
    path = tmp_path / "gaps.npz"
    np.savez(path, X=g.normal(size=(24, 3, 2)), y=np.array([0, 1, 5] * 8))
    out = tmp_path / "gaps"
    res = runner.invoke(app, ["convex", "fit", "linear", "--data", str(path), "--solver", "fista",
                              "--loss", "cross_entropy", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "3 classes" in res.output and "remapped" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["classes"] == [0, 1, 5]
