"""benchmarks/gpu_check.sh (dry run, no-GPU exit) and the benchmark's SDPA backend option."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dualattn.bench.results import read_csv
from dualattn.bench.runner import BenchConfig
from dualattn.bench.worker import Case, TimingPlan, run_memory, run_timing
from dualattn.cli import app

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _script(*args, env=None, tmp_path):
    e = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **(env or {})}
    e.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args, "--out", str(tmp_path)], capture_output=True, text=True,
                          env=e, timeout=300)


# ----------------------------------------------------------------------------- --sdpa-backend
def test_sdpa_backend_validation():
    with pytest.raises(ValueError, match="sdpa_backend"):
        BenchConfig(sdpa_backend="fast")
    with pytest.raises(ValueError, match="flash attention on CUDA needs dtype float16 or bfloat16"):
        BenchConfig(device="cuda", dtype="float32", sdpa_backend="flash")
    BenchConfig(device="cuda", dtype="bfloat16", sdpa_backend="flash")  # validated without a GPU
    with pytest.raises(ValueError, match="sdpa_backend"):
        Case("sdpa", 16, sdpa_backend="FLASH")
    a, b = Case("sdpa", 16, sdpa_backend="math"), Case("sdpa", 16, sdpa_backend="flash")
    assert a.key() != b.key()
    with pytest.raises(ValueError, match="share one sdpa_backend"):
        run_timing([a, Case("softmax", 16, sdpa_backend="flash")], TimingPlan(repeats=1))


def test_sdpa_backend_is_really_applied():
    """A backend that cannot serve the call fails the cell instead of silently falling back."""
    cell = dict(n=32, heads=2, head_dim=8, dtype="bfloat16", threads=1)
    for backend in ("auto", "math", "flash"):
        assert run_memory(Case("sdpa", sdpa_backend=backend, **cell))["status"] == "ok"
    if not torch.cuda.is_available():  # memory-efficient attention is CUDA-only
        res = run_memory(Case("sdpa", sdpa_backend="efficient", **cell))
        assert res["status"] == "error" and "backend" in res["reason"].lower()


def test_cli_sdpa_backend_option(tmp_path):
    res = CliRunner().invoke(app, ["bench", "attention", "--sdpa-backend", "bogus", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "sdpa_backend" in res.output
    res = CliRunner().invoke(app, [
        "bench", "attention", "--seq-lens", "32", "--methods", "sdpa,softmax", "--heads", "2", "--head-dim", "8",
        "--threads", "1", "--repeats", "1", "--budget-s", "0.1", "--in-process", "--device", "cpu",
        "--dtype", "bfloat16", "--sdpa-backend", "math", "--out", str(tmp_path),
    ])
    assert res.exit_code == 0, res.output
    rows = read_csv(tmp_path / "attention_speed.csv")
    assert {r["sdpa_backend"] for r in rows} == {"math"} and {r["dtype"] for r in rows} == {"bfloat16"}
    assert all(r["status"] == "ok" for r in rows)


# ----------------------------------------------------------------------------- the script
@pytest.mark.slow
def test_gpu_check_dry_run_writes_a_valid_plan(tmp_path):
    res = _script("--dry-run", tmp_path=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "are valid" in res.stdout
    plan = (tmp_path / "plan.md").read_text()
    for dtype in ("float16", "bfloat16"):
        for backend in ("flash", "efficient"):
            assert f"--dtype {dtype} --sdpa-backend {backend}" in plan
    assert "--device cuda" in plan and "--seq-lens 1024,4096,16384" in plan
    assert "pytest -m gpu" in plan and "trainer.accelerator=gpu" in plan
    assert "Total timeout budget: 450 s" in plan  # under the 8-minute goal


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_gpu_check_without_gpu_exits_with_a_message(tmp_path):
    res = _script(tmp_path=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 2
    assert "no CUDA GPU visible" in res.stderr and "--dry-run" in res.stderr
    assert not (tmp_path / "summary.md").exists()


def test_gpu_check_rejects_unknown_arguments(tmp_path):
    res = _script("--bogus", tmp_path=tmp_path)
    assert res.returncode == 2 and "unknown argument '--bogus'" in res.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sdpa_backends_on_cuda():
    cell = dict(n=256, heads=2, head_dim=64, device="cuda", threads=None)
    for dtype in ("float16", "bfloat16"):
        for backend in ("flash", "efficient"):
            res = run_memory(Case("sdpa", dtype=dtype, sdpa_backend=backend, **cell))
            assert res["status"] == "ok", (dtype, backend, res)
    res = run_memory(Case("sdpa", dtype="float32", sdpa_backend="flash", **cell))
    assert res["status"] == "error"  # flash has no float32 kernel on CUDA: refused, not a silent fallback
