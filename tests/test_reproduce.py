"""`dualattn reproduce`: protocol expansion and a tiny end-to-end run through the CLI."""

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dualattn.cli import app
from dualattn.train.config import ConfigError
from dualattn.train.reproduce import plan_runs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_quick_protocol_is_the_demo():
    proto, runs = plan_runs(CONFIGS / "reproduce-quick.yaml", out="runs")
    assert proto.name == "quick" and len(runs) == 35
    combos = {(r.cfg.data.name, r.cfg.model.variant, r.cfg.seed) for r in runs}
    for v in ("softmax", "linear", "bn", "sh", "bn+sh"):
        for ds in ("JapaneseVowels", "BasicMotions"):
            assert {(ds, v, s) for s in range(3)} <= combos
        assert ("listops-small", v, 0) in combos
    r = runs[0]
    assert r.run_dir == Path("runs/quick") / r.cfg.data.name / r.cfg.model.variant / f"seed{r.cfg.seed}"
    bm = [r for r in runs if r.cfg.data.name == "BasicMotions"]
    assert all(r.cfg.data.batch_size == 8 for r in bm)  # dataset override applied


def test_full_protocol_validates():
    proto, runs = plan_runs(CONFIGS / "reproduce-full.yaml")
    assert proto.name == "full"
    assert {r.cfg.model.dim for r in runs if r.cfg.name == "full" and r.cfg.data.name == "JapaneseVowels"} == {512}


def test_selection_and_errors():
    _, runs = plan_runs(CONFIGS / "reproduce-quick.yaml", datasets=["basicmotions"], variants=["bn"], seeds=2)
    assert [(r.cfg.data.name, r.cfg.model.variant, r.cfg.seed) for r in runs] == [
        ("BasicMotions", "bn", 0), ("BasicMotions", "bn", 1)]
    with pytest.raises(ConfigError, match="unknown"):
        plan_runs(CONFIGS / "reproduce-quick.yaml", variants=["softmaxx"])
    with pytest.raises(ConfigError, match="not in protocol"):
        plan_runs(CONFIGS / "reproduce-quick.yaml", datasets=["Heartbeat"])
    with pytest.raises(ConfigError, match="optim.lrr"):
        plan_runs(CONFIGS / "reproduce-quick.yaml", overrides=["optim.lrr=1"])


@pytest.fixture
def tiny_protocol(tmp_path):
    from dualattn.data import register_dataset
    from dualattn.train.data import synthetic_splits

    splits = synthetic_splits(n=32, T=6, C=2, seed=0)
    register_dataset("tiny-repro")(lambda name, split, **kw: getattr(splits, split))
    (tmp_path / "tiny.yaml").write_text(textwrap.dedent("""
        data: {name: tiny-repro, batch_size: 16}
        model: {dim: 8, depth: 1, num_heads: 2, mlp_hidden: 16}
        trainer: {max_epochs: 2, patience: null, num_threads: 1}
    """))
    (tmp_path / "proto.yaml").write_text(textwrap.dedent("""
        name: tiny
        variants: [softmax, bn]
        experiments:
          - {config: tiny.yaml, datasets: [tiny-repro], seeds: 1}
    """))
    return tmp_path


def test_reproduce_end_to_end_and_rerun_skips(tiny_protocol):
    t = tiny_protocol
    args = ["reproduce", "--protocol", str(t / "proto.yaml"), "--out", str(t / "runs")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    root = t / "runs" / "tiny"
    report = (root / "report.md").read_text()
    assert "| tiny-repro | softmax | 1/1 |" in report and "| tiny-repro | bn | 1/1 |" in report
    for png in ("learning_curves.png", "accuracy_vs_variant.png", "redundancy_per_layer.png"):
        assert (root / png).exists()
    s = json.loads((root / "tiny-repro" / "bn" / "seed0" / "summary.json").read_text())
    assert s["status"] == "ok" and s["epochs"] == 2
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and "2 reused" in (root / "report.md").read_text()


def test_missing_data_fails_before_any_training(tiny_protocol):
    t = tiny_protocol
    (t / "proto2.yaml").write_text(textwrap.dedent("""
        name: tiny2
        variants: [softmax]
        experiments:
          - {config: tiny.yaml, datasets: [tiny-repro, NoSuchUEA], seeds: 1}
    """))
    res = CliRunner().invoke(app, ["reproduce", "--protocol", str(t / "proto2.yaml"), "--out", str(t / "runs")])
    assert res.exit_code == 2
    assert "NoSuchUEA" in res.output and "before training" in res.output
    assert not (t / "runs" / "tiny2" / "tiny-repro").exists()  # nothing was trained


def test_train_cli_rejects_bad_config(tmp_path):
    (tmp_path / "c.yaml").write_text("data: {name: JapaneseVowels}\nmodel: {heads: 4}\n")
    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "model.heads" in res.output
    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "model.heads=", "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert not (tmp_path / "r").exists()
