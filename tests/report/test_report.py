import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dualattn.cli import app
from dualattn.report import find_runs, generate_report, group_runs


def _write_run(root, ds, variant, seed, acc, red, status="ok", epochs=3):
    d = root / ds / variant / f"seed{seed}"
    d.mkdir(parents=True)
    s = {"dataset": ds, "variant": variant, "seed": seed, "status": status, "test_acc": acc, "val_acc": acc,
         "epochs": epochs, "time_per_epoch_s": 0.5, "peak_mem_mb": 10.0, "act_mem_mb": 1.0, "params": 1000,
         "flops": 2e6, "head_redundancy": red}
    if status != "ok":
        s = {"dataset": ds, "variant": variant, "seed": seed, "status": status, "error": "non-finite loss at epoch 0 step 3"}
    (d / "summary.json").write_text(json.dumps(s))
    rows = "epoch,step,train_loss,train_acc,val_loss,val_acc,lr,epoch_time_s\n"
    rows += "".join(f"{e},{e},1.0,0.5,1.0,{acc * (e + 1) / epochs},0.001,0.5\n" for e in range(epochs))
    (d / "metrics.csv").write_text(rows)
    np.savez_compressed(d / "attention_sample.npz", layer0=np.random.rand(2, 4, 4), layer1=np.random.rand(2, 4, 4))
    return d


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "demo"
    _write_run(root, "A", "softmax", 0, 0.90, [0.1, 0.2])
    _write_run(root, "A", "softmax", 1, 0.80, [0.3, 0.2])
    _write_run(root, "A", "bn", 0, 0.70, [0.5, 0.5])
    _write_run(root, "A", "bn", 1, 0.0, None, status="failed")
    _write_run(root, "B", "sh", 0, 0.60, [0.4, 0.6])
    return root


def test_grouping_and_statistics(runs):
    groups = group_runs(find_runs(runs))
    assert list(groups) == ["A", "B"]
    soft, bn = groups["A"]
    assert (soft.variant, bn.variant) == ("softmax", "bn")  # canonical variant order
    m, s, n = soft.stat("test_acc")
    assert n == 2 and m == pytest.approx(0.85) and s == pytest.approx(np.std([0.9, 0.8], ddof=1))
    assert len(bn.ok_runs()) == 1
    lm, ls = soft.redundancy_per_layer()
    assert lm == pytest.approx([0.2, 0.2])
    assert soft.redundancy_mean()[0] == pytest.approx(0.2)


def test_report_markdown_and_plots(runs):
    path = generate_report(runs)
    text = path.read_text()
    assert "| A | softmax | 2/2 | 85.0 ± 7.1 |" in text
    assert "| A | bn | 1/2 | 70.0 ± 0.0 |" in text
    assert "non-finite loss at epoch 0 step 3" in text  # failed run is reported, not hidden
    assert "1 - cos" in text  # redundancy definition is printed
    csv_rows = (runs / "runs.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 5 and csv_rows[0].startswith("dataset,variant,seed,status,test_acc")
    for png in ("learning_curves.png", "accuracy_vs_variant.png", "redundancy_per_layer.png", "attention_A.png"):
        assert (runs / png).stat().st_size > 1000, png
        assert f"]({png})" in text


def test_report_cli(runs, tmp_path):
    res = CliRunner().invoke(app, ["report", str(runs)])
    assert res.exit_code == 0, res.output
    assert (runs / "report.md").exists()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code != 0
    assert "not found" in res.output


def test_long_range_tasks_get_their_own_bn_sh_claim(tmp_path):
    root = tmp_path / "lr"
    for seed, (soft, bnsh) in enumerate([(0.40, 0.36), (0.42, 0.37), (0.38, 0.35)]):
        _write_run(root, "listops-small", "softmax", seed, soft, [0.1, 0.2])
        _write_run(root, "listops-small", "bn+sh", seed, bnsh, [0.5, 0.5])
        _write_run(root, "GunPoint", "softmax", seed, 0.9, [0.1, 0.2])
        _write_run(root, "GunPoint", "bn+sh", seed, 0.9, [0.1, 0.2])
    text = generate_report(root).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| BN+SH beats softmax on listops-small"))
    assert "**not supported**" in row and "3 paired seeds" in row
    assert "beats softmax on GunPoint" not in text  # time series are judged across datasets
    verdicts = json.loads((root / "verdicts.json").read_text())
    assert any(v["claim"] == "BN+SH beats softmax on listops-small" for v in verdicts)
