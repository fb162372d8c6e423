"""Real interruptions (SIGKILL) and real DDP (2 gloo processes) through the CLI, in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from dualattn.train.callbacks import read_metrics_csv

LAUNCHER = textwrap.dedent(
    """
    import sys
    from dualattn.data import register_dataset
    from dualattn.train.data import synthetic_splits

    S = synthetic_splits(n=48, T=8, C=3, seed=0)

    @register_dataset("synthetic")
    def _load(name, split, **kw):
        return getattr(S, split)

    from dualattn.cli import main
    main()
    """
)

CONFIG = textwrap.dedent(
    """
    name: sub
    seed: 2
    data: {name: synthetic, batch_size: 8}
    model: {dim: 16, depth: 1, num_heads: 2, mlp_hidden: 32, dropout: 0.1}
    optim: {lr: 3.0e-3}
    trainer: {max_epochs: 3, patience: null, progress: none, num_threads: 1}
    """
)


@pytest.fixture
def launcher(tmp_path):
    (tmp_path / "launch.py").write_text(LAUNCHER)
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    return tmp_path


def _cli(tmp, *args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, str(tmp / "launch.py"), *args], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(launcher):
    from dualattn.train.config import load_config
    from dualattn.train.data import synthetic_splits
    from dualattn.train.run import train_run

    t = launcher
    # uninterrupted reference in-process (same data, seed and thread count as the CLI runs)
    train_run(load_config(t / "cfg.yaml"), t / "ref", splits=synthetic_splits(n=48, T=8, C=3, seed=0))
    killed = _cli(t, "train", "cfg.yaml", "--run-dir", "run", "--no-report",
                  "trainer.crash_after_epochs=2", "trainer.crash_mode=sigkill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert json.loads((t / "run" / "summary.json").read_text())["status"] == "running"
    resumed = _cli(t, "train", "cfg.yaml", "--run-dir", "run", "--resume", "--no-report")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(t / "ref"), _weights(t / "run")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    ra, rb = read_metrics_csv(t / "ref" / "metrics.csv"), read_metrics_csv(t / "run" / "metrics.csv")
    assert [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]
    sa = json.loads((t / "ref" / "summary.json").read_text())
    sb = json.loads((t / "run" / "summary.json").read_text())
    assert sa["test_acc"] == sb["test_acc"] and sb["status"] == "ok"


@pytest.mark.slow
def test_ddp_two_gloo_processes(launcher):
    t = launcher
    res = _cli(t, "train", "cfg.yaml", "--run-dir", "ddp", "trainer.strategy=ddp", "trainer.devices=2",
               "trainer.accelerator=cpu", "trainer.ddp_backend=gloo", "trainer.max_epochs=2")
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    s = json.loads((t / "ddp" / "summary.json").read_text())
    assert s["status"] == "ok" and s["world_size"] == 2 and s["epochs"] == 2
    rows = read_metrics_csv(t / "ddp" / "metrics.csv")
    assert len(rows) == 2
    # 48 samples, batch 8, 2 ranks -> 3 optimizer steps per epoch on each rank
    assert [int(r["step"]) for r in rows] == [3, 6]
    assert (t / "ddp" / "report.md").exists()
