"""Report aggregation: mean ± std per width, claim verdicts, convex-vs-Adam objectives, certification."""

import numpy as np
import pytest

from dualattn.transfer.records import BetaSelection, SolveInfo, TransferResult, append_jsonl
from dualattn.transfer.report import (beta_table, claim_check, markdown_table, not_certified, objective_comparison,
                                      summarize, width_table, write_report)


def _rec(head, kind, seed, acc, obj, gap=None, convex_head=None, d=8, full=False, certified=None):
    return TransferResult(task="t", backbone="b", head=head, kind=kind, seed=seed, n_train=10, n_test=5, tokens=5,
                          width=d, full_width=full, params=1, loss="cross_entropy", beta=1.0, train_acc=acc,
                          test_acc=acc, objective=obj, gap=gap, time_s=1.0 + seed, convex_head=convex_head,
                          rel_gap=None if gap is None else gap / obj, status=None if gap is None else "optimal",
                          certified=certified if certified is not None else (True if kind == "convex" else None))


RECORDS = (
    [_rec("linear-probe", "baseline", s, a, 10) for s, a in enumerate([0.70, 0.72, 0.74])]
    + [_rec("mlp", "baseline", s, a, 9) for s, a in enumerate([0.80, 0.90, 0.85])]
    + [_rec("linear-probe-384d", "baseline", s, 0.99, 1, d=384, full=True) for s in range(3)]
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


def test_claim_check_verdicts_use_the_seed_spread_and_name_the_full_width_reference():
    text = "\n".join(claim_check(summarize(RECORDS)))
    assert "d=8" in text and "beats `linear-probe` (+13.0 points)" in text
    assert "within one std of `mlp`" in text  # 85 vs 85 ± 5
    # the 384-d probe sees other features: listed separately, as the full-width reference
    assert "full-width reference: is worse than `linear-probe-384d` (d=384) (-14.0 points)" in text


def test_objective_comparison_pairs_same_program_seed_and_width():
    extra_width = [_rec("adam:lin", "nonconvex", s, 0.8, 100.0, None, "linear", d=4) for s in range(3)]
    (line,) = objective_comparison(summarize(RECORDS), RECORDS + extra_width)  # d=4 has no convex partner
    assert "adam:lin" in line and "20.0 %" in line and "d=8" in line


def test_width_table_and_uncertified_solves_are_reported():
    recs = RECORDS + [_rec("convex:lin", "convex", s, 0.9, 4.0, 0.4, "linear", d=32, certified=False)
                      for s in range(2)]
    rows = summarize(recs)
    table = width_table(rows, "t")
    assert "| d=8 | d=32 | d=384 (full) |" in table
    assert "| convex:lin | convex | 85.0 ± 1.0 | 90.0 ± 0.0\\* |" in table
    sel = BetaSelection(task="t", head="convex:lin", width=32, seed=0, val_fraction=0.2, initial_grid=[1, 10],
                        grid=[1, 10, 100], val_acc={"1.0": 0.5, "10.0": 0.6, "100.0": 0.7}, beta=100.0,
                        extended=[100.0], at_edge="upper",
                        solves={"100.0": SolveInfo(status="max_iter", rel_gap=0.2, certified=False)})
    lines = not_certified(recs, [sel])
    assert len(lines) == 3 and "seed 1: status `optimal`, rel. gap 1.0e-01" in lines[1]
    assert "beta search t / `convex:lin` d=32 beta=100: status `max_iter`" in lines[2]
    assert "| t | convex:lin | 32 | 100 | 1, 10, 100 | 100 | **upper** |" in beta_table([sel])


def test_write_report_files(tmp_path):
    for r in RECORDS:
        append_jsonl(tmp_path / "results.jsonl", r)
    report = write_report(tmp_path).read_text()
    assert "| t | convex:lin | convex | 8 |" in report
    assert "none: every convex solve reached" in report
    assert (tmp_path / "summary.csv").read_text().count("\n") == 1 + 5
    assert (tmp_path / "plots" / "accuracy.png").is_file()
    assert (tmp_path / "plots" / "accuracy-vs-width.png").stat().st_size > 0  # widths 8 and 384
    with pytest.raises(FileNotFoundError, match="no results"):
        write_report(tmp_path / "empty")
