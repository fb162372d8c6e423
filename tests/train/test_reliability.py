"""Reliability of runs as a new user meets it: one process per run folder, clear one-line errors
for --resume without/with a broken checkpoint, read-only run folders and unwritable caches."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dualattn.train.lock as lock_mod
from dualattn.cli import app
from dualattn.train.callbacks import read_metrics_csv
from dualattn.train.config import build_config
from dualattn.train.data import synthetic_splits
from dualattn.train.lock import LOCK_NAME, RunDirLock, RunDirLocked, RunDirNotWritable
from dualattn.train.run import RunError, train_run

SRC = str(Path(__file__).resolve().parents[2] / "src")
SPLITS = synthetic_splits(n=48, T=8, C=3, seed=0)
CONFIG = textwrap.dedent(
    """
    name: rel
    seed: 2
    data: {name: synthetic, batch_size: 8}
    model: {dim: 16, depth: 1, num_heads: 2, mlp_hidden: 32, dropout: 0.1}
    optim: {lr: 3.0e-3}
    trainer: {max_epochs: 3, patience: null, progress: none, num_threads: 1}
    """
)


def _env(**extra):
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore", **extra}


def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder in which this process cannot create anything (as root: a path in sysfs)."""
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").touch()
    except OSError:
        return ro / "run"
    (ro / "probe").unlink()
    ro.chmod(0o755)
    sysfs = Path("/sys/dualattn-unwritable-test")
    try:
        sysfs.mkdir()
    except OSError:
        return sysfs / "run"
    sysfs.rmdir()  # pragma: no cover
    pytest.skip("no unwritable location available (running as root without sysfs)")


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock of ``tmp_path/run``; yields (run_dir, process)."""
    run = tmp_path / "run"
    # load lock.py alone (no torch import: the holder starts in a fraction of a second)
    code = ("import sys, importlib.util as u\n"
            f"s = u.spec_from_file_location('lock', {lock_mod.__file__!r}); m = u.module_from_spec(s)\n"
            "s.loader.exec_module(m)\n"
            f"m.RunDirLock({str(run)!r}).acquire(); print('held', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=_env())
    assert p.stdout.readline().strip() == "held"
    yield run, p
    if p.poll() is None:
        p.kill()
    p.wait()


# --------------------------------------------------------------------------- lock
def test_lock_refuses_second_holder_naming_folder_and_pid(holder):
    run, p = holder
    with pytest.raises(RunDirLocked) as err:
        RunDirLock(run).acquire()
    msg = str(err.value)
    assert str(run) in msg and f"pid {p.pid}" in msg and "\n" not in msg
    assert err.value.holder["pid"] == str(p.pid)


def test_lock_is_released_when_the_holder_is_killed(holder):
    run, p = holder
    p.send_signal(signal.SIGKILL)
    p.wait()
    with RunDirLock(run) as lk:  # the OS dropped the flock with the process
        assert lk.held
        assert f"pid={os.getpid()}" in (run / LOCK_NAME).read_text()


def test_lock_reentry_in_one_process_is_refused_and_release_frees_it(tmp_path):
    run = tmp_path / "runs" / "name" / "r"
    a = RunDirLock(run).acquire()
    with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
        RunDirLock(run).acquire()
    a.release()
    RunDirLock(run).acquire().release()
    assert not (tmp_path / "runs").exists()  # created only for the lock and left empty: removed again
    (tmp_path / "runs").mkdir()
    with RunDirLock(run):
        (run / "metrics.csv").write_text("x")
    assert (run / "metrics.csv").exists() and (run / LOCK_NAME).exists()


def test_exclusive_file_fallback_without_fcntl(tmp_path, monkeypatch, holder):
    monkeypatch.setattr(lock_mod, "fcntl", None)
    run = tmp_path / "excl"
    run.mkdir()
    # a lock file left by a process that no longer runs is stale and taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_NAME).write_text(f"pid={dead.stdout.strip()}\nhost={os.uname().nodename}\n")
    lk = RunDirLock(run).acquire()
    assert f"pid={os.getpid()}" in (run / LOCK_NAME).read_text()
    # a live holder (this process) is refused
    with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
        RunDirLock(run).acquire()
    lk.release()
    assert not (run / LOCK_NAME).exists()
    # a live holder in another process as well
    _, p = holder
    (run / LOCK_NAME).write_text(f"pid={p.pid}\nhost={os.uname().nodename}\n")
    with pytest.raises(RunDirLocked, match=f"pid {p.pid}"):
        RunDirLock(run).acquire()


def test_unwritable_run_folder_is_one_clear_error(tmp_path):
    bad = _unwritable_dir(tmp_path)
    with pytest.raises(RunDirNotWritable) as err:
        RunDirLock(bad).acquire()
    assert str(bad) in str(err.value) and "not writable" in str(err.value)


# --------------------------------------------------------------------------- train_run / CLI
def _cfg(**trainer):
    return build_config({"name": "rel", "seed": 2, "data": {"name": "synthetic", "batch_size": 8},
                         "model": {"dim": 16, "depth": 1, "num_heads": 2, "mlp_hidden": 32},
                         "trainer": {"max_epochs": 2, "patience": None, "progress": "none", "num_threads": 1,
                                     **trainer}})


def test_train_run_refuses_a_locked_folder(holder):
    run, p = holder
    with pytest.raises(RunError, match=f"pid {p.pid}"):
        train_run(_cfg(), run, splits=SPLITS)
    assert not (run / "metrics.csv").exists()


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Run ``dualattn train`` in-process on the synthetic splits; returns (invoke, config path)."""
    import dualattn.train.run as run_mod

    monkeypatch.setattr(run_mod, "load_splits", lambda data_cfg: SPLITS)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)

    def invoke(*args):
        return CliRunner().invoke(app, ["train", str(cfg), "--no-report", *map(str, args)])

    return invoke


def _error_line(result):
    """The one ``error:`` line of a failed command (and no traceback)."""
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_resume_without_checkpoint_says_so(cli, tmp_path):
    run = tmp_path / "fresh"
    r = cli("--run-dir", run, "--resume")
    assert r.exit_code == 0, r.output
    assert "--resume given but" in r.stderr and "starting" in r.stderr and "from scratch" in r.stderr
    assert str(run / "checkpoints" / "last.ckpt") in r.stderr
    assert len(read_metrics_csv(run / "metrics.csv")) == 3
    # a second --resume of the finished run continues from its checkpoint and says so
    r = cli("--run-dir", run, "--resume")
    assert r.exit_code == 0, r.output
    assert "resuming from" in r.stderr and "from scratch" not in r.stderr
    assert len(read_metrics_csv(run / "metrics.csv")) == 3


def test_cli_truncated_checkpoint_is_one_line_naming_the_file(cli, tmp_path):
    run = tmp_path / "trunc"
    assert cli("--run-dir", run).exit_code == 0
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    r = cli("--run-dir", run, "--resume")
    assert r.exit_code == 2, r.output
    line = _error_line(r)
    assert str(ckpt) in line and "delete it" in line and "without --resume" in line
    assert "Traceback" not in r.output


def test_cli_locked_folder_is_refused_with_holder_pid(cli, tmp_path):
    run = tmp_path / "busy"
    with RunDirLock(run):
        r = cli("--run-dir", run)
    assert r.exit_code == 2, r.output
    line = _error_line(r)
    assert str(run) in line and f"pid {os.getpid()}" in line
    assert not (run / "metrics.csv").exists()


def test_cli_unwritable_run_folder_is_one_line(cli, tmp_path):
    bad = _unwritable_dir(tmp_path)
    r = cli("--run-dir", bad)
    assert r.exit_code == 2, r.output
    line = _error_line(r)
    assert str(bad) in line and "not writable" in line


def test_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    from dualattn.data import CacheDirError, load_dataset

    bad = _unwritable_dir(tmp_path)
    monkeypatch.setenv("DUALATTN_CACHE", str(bad))
    with pytest.raises(CacheDirError, match="DUALATTN_CACHE") as err:
        load_dataset("listops-small", "train", progress=False)
    assert str(bad) in str(err.value)
    r = CliRunner().invoke(app, ["data", "prepare", "listops-small"])
    assert r.exit_code == 2, r.output
    assert str(bad) in r.stderr and "Traceback" not in r.output
    cfg = build_config({"name": "c", "data": {"name": "listops-small"}, "model": {"dim": 16, "depth": 1},
                        "trainer": {"max_epochs": 1, "progress": "none"}})
    from dualattn.train.data import DataError

    with pytest.raises((RunError, DataError), match="not writable") as err:  # both are one-line CLI errors
        train_run(cfg, tmp_path / "run")
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_cli_processes_into_one_folder(tmp_path):
    """The issue's reproduction: two `dualattn train` into one folder; one must be refused."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(textwrap.dedent(
        """
        from dualattn.data import register_dataset
        from dualattn.train.data import synthetic_splits

        S = synthetic_splits(n=48, T=8, C=3, seed=0)

        @register_dataset("synthetic")
        def _load(name, split, **kw):
            return getattr(S, split)

        from dualattn.cli import main
        main()
        """))
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    cmd = [sys.executable, str(launcher), "train", "cfg.yaml", "--run-dir", "run", "--no-report"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    refused = next(err for p, (_, err) in zip(procs, outs) if p.returncode == 2)
    # refused while the other trains (lock), or after it finished (folder already holds a run)
    assert "in use by another training process" in refused or "already holds a training run" in refused
    rows = read_metrics_csv(tmp_path / "run" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
