"""Paper protocol: packaged protocol files, plan, shards, estimate, preflight order, --jobs, merge, rerun."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dualattn.cli import app
from dualattn.train.config import ConfigError, load_config
from dualattn.train.reproduce import (
    BUILTIN_PROTOCOLS,
    builtin_protocol,
    estimate,
    parse_shard,
    plan_runs,
    preflight,
    protocols_dir,
    schedule_makespan,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_packaged_protocols_are_copies_of_configs():
    packaged = sorted(p.name for p in protocols_dir().glob("*.yaml"))
    assert set(BUILTIN_PROTOCOLS.values()) <= set(packaged)
    for name in packaged:
        assert (protocols_dir() / name).read_text() == (CONFIGS / name).read_text(), f"{name} out of sync"


def test_paper_protocol_plan(tmp_path):
    proto, runs = plan_runs(builtin_protocol("paper"), out=tmp_path)
    ts = {"JapaneseVowels", "BasicMotions", "ArrowHead", "GunPoint", "ItalyPowerDemand", "OSULeaf", "ACSF1",
          "PickupGestureWiimoteZ"}
    seeds = {}
    for r in runs:
        seeds.setdefault((r.cfg.data.name, r.cfg.model.variant), set()).add(r.cfg.seed)
        assert r.cfg.trainer.num_threads == 1  # results independent of --jobs
        assert r.estimate_s is not None
    assert {d for d, _ in seeds} >= ts
    for (ds, v), s in seeds.items():
        if ds in ("JapaneseVowels", "BasicMotions"):
            assert len(s) == 10
        elif ds in ts:
            assert len(s) >= 5
            assert v in ("softmax", "linear", "bn", "sh", "bn+sh")
        else:
            assert len(s) == 3
    for r in runs:
        if r.cfg.data.name in ts:  # paper recipe, checkpoint/stop on validation loss
            m = r.cfg.model
            assert (m.dim, m.depth, m.num_heads, r.cfg.optim.name, r.cfg.optim.lr) == (512, 2, 8, "radam", 1e-3)
            assert r.cfg.trainer.monitor == "val_loss" and r.cfg.trainer.patience == 7  # budget adaptation
            # separable sets: val loss shrinks forever, so tiny improvements must not reset patience
            assert r.cfg.trainer.min_delta == (0.0 if r.cfg.data.name == "JapaneseVowels" else 1e-3)
    assert load_config(CONFIGS / "uea.yaml").trainer.monitor == "val_loss"


def test_shards_partition_the_plan(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # plans read OUT=runs/ for finished runs; keep the developer's runs out of it
    _, full = plan_runs(builtin_protocol("paper"))
    parts = [plan_runs(builtin_protocol("paper"), shard=(i, 4))[1] for i in range(4)]
    dirs = [[str(r.run_dir) for r in p] for p in parts]
    assert sorted(d for p in dirs for d in p) == sorted(str(r.run_dir) for r in full)  # union = all
    assert sum(len(p) for p in dirs) == len({d for p in dirs for d in p})  # disjoint
    assert dirs[0] == [str(r.run_dir) for r in plan_runs(builtin_protocol("paper"), shard=(0, 4))[1]]  # stable
    for bad in ("4/4", "1", "a/b", "-1/3", "0/0"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


def test_estimate_printed_and_schedule(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert schedule_makespan([3, 3, 2, 2, 2], 2) == 7  # greedy longest-first: [3+2+2, 3+2]
    assert schedule_makespan([5, 1], 4) == 5
    res = CliRunner().invoke(app, ["reproduce", "--paper", "--estimate", "--jobs", "2", "--shard", "0/2"])
    assert res.exit_code == 0, res.output
    assert "estimate:" in res.output and "--jobs 2" in res.output and "min wall" in res.output


@pytest.fixture
def tiny(tmp_path):
    from dualattn.data import register_dataset
    from dualattn.train.data import synthetic_splits

    splits = synthetic_splits(n=32, T=6, C=2, seed=0)
    register_dataset("tiny-proto")(lambda name, split, **kw: getattr(splits, split))
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent("""
        data: {name: tiny-proto, batch_size: 16}
        model: {dim: 8, depth: 1, num_heads: 2, mlp_hidden: 16}
        trainer: {max_epochs: 2, patience: null, num_threads: 1, monitor: val_loss}
    """))
    return tmp_path


def _fake_generator(calls):
    def gen(*args, **kw):
        calls.append(args)
        raise ValueError("generator called")

    return gen


def test_preflight_checks_files_before_generating_listops(tiny, monkeypatch):
    from dualattn.data import base

    calls = []
    monkeypatch.setitem(base._REGISTRY, "listops-small", _fake_generator(calls))
    monkeypatch.delenv("DUALATTN_UEA_ROOT", raising=False)
    (tiny / "p.yaml").write_text(textwrap.dedent("""
        name: pf
        variants: [softmax]
        experiments:
          - {config: tiny.yaml, datasets: [listops-small]}
          - {config: tiny.yaml, datasets: [Heartbeat, GunPoint]}
    """))
    _, runs = plan_runs(tiny / "p.yaml", out=tiny / "runs")
    from dualattn.train.data import DataError

    with pytest.raises(DataError, match="Heartbeat") as exc:
        preflight(runs)
    assert "DUALATTN_UEA_ROOT" in str(exc.value) and "GunPoint" not in str(exc.value)
    assert calls == []  # the ListOps generator was never called
    res = CliRunner().invoke(app, ["reproduce", "--protocol", str(tiny / "p.yaml"), "--out", str(tiny / "runs")])
    assert res.exit_code == 2 and "Heartbeat" in res.output and calls == []
    # without the missing UEA set, the generated set is prepared last (and here fails loudly)
    _, runs = plan_runs(tiny / "p.yaml", out=tiny / "runs", datasets=["listops-small", "GunPoint"])
    with pytest.raises(DataError, match="listops-small"):
        preflight(runs)
    assert len(calls) == 1


def _train_tiny(tiny, out, jobs=1, shard=None, extra=()):
    (tiny / "proto.yaml").write_text(textwrap.dedent("""
        name: tiny
        variants: [softmax, bn]
        experiments:
          - {config: tiny.yaml, datasets: [tiny-proto], seeds: 2, estimate_s: {default: 5}}
    """))
    args = ["reproduce", "--protocol", str(tiny / "proto.yaml"), "--out", str(out), "--jobs", str(jobs),
            "--no-report", *extra]
    if shard:
        args += ["--shard", shard]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def _accs(root: Path) -> dict[str, float]:
    return {str(p.parent.relative_to(root)): json.loads(p.read_text())["test_acc"] for p in root.rglob("summary.json")}


def test_shards_then_report_merges_and_detects_duplicates(tiny):
    _train_tiny(tiny, tiny / "s0", shard="0/2")
    _train_tiny(tiny, tiny / "s1", shard="1/2")
    a0, a1 = _accs(tiny / "s0" / "tiny"), _accs(tiny / "s1" / "tiny")
    assert len(a0) == len(a1) == 2 and not set(a0) & set(a1)
    res = CliRunner().invoke(app, ["report", str(tiny / "s0" / "tiny"), str(tiny / "s1" / "tiny"),
                                   "--out", str(tiny / "merged")])
    assert res.exit_code == 0, res.output
    rep = (tiny / "merged" / "report.md").read_text()
    assert "| tiny-proto | softmax | 2/2 |" in rep and "| tiny-proto | bn | 2/2 |" in rep
    assert "## Statistics and verdicts" in rep and (tiny / "merged" / "verdicts.json").is_file()
    assert "Duplicate" not in rep
    res = CliRunner().invoke(app, ["report", str(tiny / "s0" / "tiny"), str(tiny / "s0" / "tiny"),
                                   "--out", str(tiny / "dup")])
    assert res.exit_code == 0 and "identical duplicate" in res.output
    assert "Duplicate runs found" in (tiny / "dup" / "report.md").read_text()


def test_rerun_from_saved_config_reproduces_test_accuracy(tiny):
    from dualattn.train.run import train_run

    _train_tiny(tiny, tiny / "a")
    rd = tiny / "a" / "tiny" / "tiny-proto" / "bn" / "seed1"
    first = json.loads((rd / "summary.json").read_text())
    again = train_run(load_config(rd / "config.yaml"), tiny / "rerun", progress="none")
    assert again["test_acc"] == first["test_acc"] and again["val_acc"] == first["val_acc"]
    assert (tiny / "rerun" / "metrics.csv").read_text() .splitlines()[1].split(",")[:6] == \
        (rd / "metrics.csv").read_text().splitlines()[1].split(",")[:6]


def test_changed_protocol_refuses_stale_run_folders(tiny):
    _train_tiny(tiny, tiny / "a")
    # same protocol again: every run is skipped
    res = _train_tiny(tiny, tiny / "a")
    assert "4 already done" in res.output or "skipped" in res.output.lower(), res.output
    # a changed stopping rule must not silently reuse the old results
    args = ["reproduce", "--protocol", str(tiny / "proto.yaml"), "--out", str(tiny / "a"), "--no-report",
            "--set", "trainer.min_delta=0.01"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0
    assert "different config" in res.output and "trainer.min_delta" in res.output and "seed" in res.output
    # paths and thread counts do not make a run stale
    res = CliRunner().invoke(app, args[:-2] + ["--set", "trainer.num_threads=2"])
    assert res.exit_code == 0, res.output


def test_min_delta_reaches_early_stopping(tiny, monkeypatch):
    import lightning.pytorch.callbacks as cb

    from dualattn.train import run as run_mod

    seen = {}

    class Spy(cb.EarlyStopping):
        def __init__(self, **kw):
            seen.update(kw)
            super().__init__(**kw)

    monkeypatch.setattr(cb, "EarlyStopping", Spy)  # train_run imports it at call time
    cfg = load_config(tiny / "tiny.yaml", ["trainer.patience=3", "trainer.min_delta=0.5"])
    run_mod.train_run(cfg, tiny / "md", progress="none")
    assert seen["min_delta"] == 0.5 and seen["patience"] == 3
    with pytest.raises(ConfigError, match="min_delta"):
        load_config(tiny / "tiny.yaml", ["trainer.min_delta=-1"])


@pytest.mark.slow
def test_jobs_2_gives_the_same_results_as_jobs_1(tmp_path):
    # worker processes are spawned, so the data must be loadable in a fresh process: a shipped UCR set
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent("""
        data: {name: ItalyPowerDemand, batch_size: 16}
        model: {dim: 8, depth: 1, num_heads: 2, mlp_hidden: 16}
        trainer: {max_epochs: 2, patience: null, num_threads: 1, monitor: val_loss}
    """))
    (tmp_path / "proto.yaml").write_text(textwrap.dedent("""
        name: tiny
        variants: [softmax, bn]
        experiments:
          - {config: tiny.yaml, datasets: [ItalyPowerDemand], seeds: 1}
    """))
    from dualattn.train.reproduce import execute

    outs = {}
    for jobs in (1, 2):
        _, runs = plan_runs(tmp_path / "proto.yaml", out=tmp_path / f"j{jobs}")
        res = execute(runs, jobs=jobs, show_progress=False)
        assert [o.status for o in res] == ["ok"] * 2, [o.error for o in res]
        outs[jobs] = _accs(tmp_path / f"j{jobs}" / "tiny")
    assert len(outs[1]) == 2 and outs[1] == outs[2]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_workers_stop_when_reproduce_is_killed():
    # a killed `reproduce` must not leave its workers training (and writing run folders) unseen
    script = textwrap.dedent("""
        import os, time
        from dualattn.train.reproduce import _worker_init
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _worker_init(1, parent)
            time.sleep(60)
            os._exit(0)
        print(pid, flush=True)
        os._exit(0)  # the parent dies first, as under `kill`
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    child = int(out.stdout.strip())

    def alive() -> bool:
        try:
            state = Path(f"/proc/{child}/status").read_text()
            return "\nState:\tZ" not in state
        except FileNotFoundError:
            return False
        except OSError:  # pragma: no cover - no /proc
            try:
                os.kill(child, 0)
                return True
            except ProcessLookupError:
                return False

    deadline = time.monotonic() + 20
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(), "orphaned worker kept running"
