"""`dualattn report` validates every summary.json: bad ones are listed with their path, never crash
the report and never count as ok."""

import json

import pytest
from typer.testing import CliRunner

from dualattn.cli import app
from dualattn.report import find_runs, generate_report, group_runs
from dualattn.report.aggregate import RunSummary, check_summary, validate_runs

GOOD = {"dataset": "A", "variant": "softmax", "seed": 0, "status": "ok", "test_acc": 0.9, "val_acc": 0.8,
        "epochs": 3, "time_per_epoch_s": 0.5, "peak_mem_mb": 10.0, "act_mem_mb": 1.0, "params": 1000,
        "flops": 2e6, "head_redundancy": [0.1, 0.2]}


def _put(root, rel, content):
    d = root / rel
    d.mkdir(parents=True)
    (d / "summary.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return d / "summary.json"


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    _put(root, "good0", GOOD)
    _put(root, "good1", {**GOOD, "seed": 1, "test_acc": 0.7})
    _put(root, "nan_test", {**GOOD, "seed": 2, "test_acc": float("nan")})  # eval_test: false is valid
    _put(root, "failed", {"dataset": "A", "variant": "softmax", "seed": 3, "status": "failed", "error": "NaN loss"})
    bad = {
        "text_acc": _put(root, "text_acc", {**GOOD, "seed": 4, "test_acc": "ninety"}),
        "missing": _put(root, "missing", {"dataset": "A", "variant": "softmax", "seed": 5}),
        "ok_no_acc": _put(root, "ok_no_acc", {k: v for k, v in GOOD.items() if k != "test_acc"} | {"seed": 6}),
        "out_of_range": _put(root, "out_of_range", {**GOOD, "seed": 7, "val_acc": 85.0}),
        "not_json": _put(root, "not_json", "{oops"),
        "list": _put(root, "list", "[1, 2]"),
    }
    return root, bad


def test_validate_runs_splits_valid_from_invalid(runs):
    root, bad = runs
    valid, errors = validate_runs(root)
    assert sorted(r.path.name for r in valid) == ["failed", "good0", "good1", "nan_test"]
    assert sorted(e.path for e in errors) == sorted(bad.values())
    by_dir = {e.path.parent.name: e.message for e in errors}
    assert "test_acc" in by_dir["text_acc"] and "ninety" in by_dir["text_acc"]
    assert "status" in by_dir["missing"]
    assert "test_acc missing" in by_dir["ok_no_acc"]
    assert "val_acc" in by_dir["out_of_range"] and "85" in by_dir["out_of_range"]
    assert by_dir["not_json"].startswith("unreadable")
    assert "JSON object" in by_dir["list"]


def test_invalid_summaries_never_count_as_ok(runs):
    root, bad = runs
    records = find_runs(root)
    assert len(records) == 10
    invalid = [r for r in records if r.summary["status"] == "invalid"]
    assert len(invalid) == len(bad) and not any(r.ok for r in invalid)
    for r in invalid:
        assert str(r.path / "summary.json") in r.summary["error"]
    (soft,) = [g for g in group_runs(records)["A"] if g.variant == "softmax"]
    m, _, n = soft.stat("test_acc")
    assert n == 2 and m == pytest.approx(0.8)  # good0, good1 (NaN test acc is not a number to average)


def test_report_lists_invalid_summaries_with_their_path(runs):
    root, bad = runs
    text = generate_report(root).read_text()
    for path in bad.values():
        assert str(path) in text
    res = CliRunner().invoke(app, ["report", str(root)])
    assert res.exit_code == 0, res.output
    for path in bad.values():  # and warned about on the console
        assert f"invalid run summary {path}" in res.output.replace("\n", "")


def test_check_summary_accepts_what_train_writes():
    assert RunSummary.model_validate(GOOD).test_acc == 0.9
    # ints where floats are expected are fine; strings and bools are not
    RunSummary.model_validate({**GOOD, "test_acc": 1, "flops": 2})
    for bad in ({"seed": "0"}, {"epochs": True}, {"test_acc": "0.9"}, {"head_redundancy": ["x"]}):
        with pytest.raises(ValueError):
            RunSummary.model_validate({**GOOD, **bad})


def test_check_summary_on_a_real_training_summary(tmp_path):
    from dualattn.train.config import build_config
    from dualattn.train.data import synthetic_splits
    from dualattn.train.run import train_run

    cfg = build_config({"name": "v", "data": {"name": "synthetic", "batch_size": 16},
                        "model": {"dim": 16, "depth": 1, "num_heads": 2, "mlp_hidden": 32},
                        "trainer": {"max_epochs": 1, "progress": "none", "num_threads": 1}})
    train_run(cfg, tmp_path, splits=synthetic_splits(n=32, T=6, C=2, seed=0))
    summary, err = check_summary(tmp_path / "summary.json")
    assert err is None, err
