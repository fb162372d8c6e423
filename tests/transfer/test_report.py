"""Report aggregation: mean ± std, claim verdicts, convex-vs-Adam objective comparison."""

import json

import numpy as np
import pytest

from dualattn.report.transfer import claim_check, markdown_table, objective_comparison, summarize, write_report


def _rec(head, kind, seed, acc, obj, gap=None, convex_head=None, d=8):
    return {"task": "t", "backbone": "b", "head": head, "kind": kind, "seed": seed, "n_train": 10, "n_test": 5,
            "s": 5, "d": d, "params": 1, "train_acc": acc, "test_acc": acc, "objective": obj, "gap": gap,
            "time_s": 1.0 + seed, "extra": {"convex_head": convex_head, "rel_gap": None if gap is None else gap / obj}}


RECORDS = (
    [_rec("linear-probe", "baseline", s, a, 10) for s, a in enumerate([0.70, 0.72, 0.74])]
    + [_rec("mlp", "baseline", s, a, 9) for s, a in enumerate([0.80, 0.90, 0.85])]
    + [_rec("linear-probe-384d", "baseline", s, 0.99, 1, d=384) for s in range(3)]
    + [_rec("convex:lin", "convex", s, a, 5.0, 0.1, "linear") for s, a in enumerate([0.84, 0.86, 0.85])]
    + [_rec("adam:lin", "nonconvex", s, 0.8, 6.0, None, "linear") for s in range(3)]
)


def test_summarize_mean_and_sample_std():
    rows = {r["head"]: r for r in summarize(RECORDS)}
    assert rows["linear-probe"]["test_acc_mean"] == pytest.approx(0.72)
    assert rows["linear-probe"]["test_acc_std"] == pytest.approx(np.std([0.70, 0.72, 0.74], ddof=1))
    assert rows["convex:lin"]["gap_mean"] == pytest.approx(0.1)
    assert rows["linear-probe"]["seeds"] == 3
    order = [r["head"] for r in summarize(RECORDS, ["adam:lin", "mlp"])]
    assert order[:2] == ["adam:lin", "mlp"]
    assert "72.0 ± 2.0" in markdown_table(summarize(RECORDS))


def test_claim_check_verdicts_use_the_seed_spread():
    text = "\n".join(claim_check(summarize(RECORDS)))
    assert "beats `linear-probe` (+13.0 points)" in text
    assert "within one std of `mlp`" in text  # 85 vs 85 ± 5
    assert "384d" not in text  # different features are not part of the claim


def test_objective_comparison_pairs_same_program_and_seed():
    (line,) = objective_comparison(summarize(RECORDS), RECORDS)
    assert "adam:lin" in line and "20.0 %" in line


def test_write_report_files(tmp_path):
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS))
    report = write_report(tmp_path).read_text()
    assert "| t | convex:lin | convex |" in report
    assert (tmp_path / "summary.csv").read_text().count("\n") == 1 + 5
    assert (tmp_path / "plots" / "accuracy.png").is_file()
    with pytest.raises(FileNotFoundError, match="no results"):
        write_report(tmp_path / "empty")
