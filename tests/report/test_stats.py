"""dualattn.report.stats against scipy on synthetic numbers with known answers."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from dualattn.report import stats as st


def test_mean_ci_matches_scipy_t_interval():
    x = [0.91, 0.93, 0.95, 0.92, 0.96]
    c = st.mean_ci(x)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert c.n == 5 and c.mean == pytest.approx(np.mean(x))
    assert (c.lo, c.hi) == (pytest.approx(lo), pytest.approx(hi))
    one = st.mean_ci([0.5])
    assert one.n == 1 and math.isnan(one.lo)
    assert st.mean_ci([0.7, 0.7, 0.7]).lo == pytest.approx(0.7)  # zero width when all equal
    with pytest.raises(ValueError, match="confidence"):
        st.mean_ci(x, confidence=1.5)


def test_paired_test_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(0.9, 0.02, 10)
    b = a - rng.normal(0.01, 0.01, 10)
    pt = st.paired_test(a, b)
    assert pt.t_p == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert pt.wilcoxon_p == pytest.approx(sps.wilcoxon(a - b).pvalue)
    assert pt.mean_diff == pytest.approx(np.mean(a - b)) and pt.n == 10


def test_paired_test_degenerate_cases():
    z = st.paired_test([1, 2, 3], [1, 2, 3])
    assert z.t_p == 1.0 and z.wilcoxon_p == 1.0 and "zero" in z.note
    c = st.paired_test([2, 3, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6])  # constant +1
    assert math.isnan(c.t_p) and "constant" in c.note
    assert c.wilcoxon_p == pytest.approx(2 / 2**6)  # exact: all six signs positive
    ties = st.paired_test([1, 2, 3, 4, 5], [1, 1, 1, 1, 1])  # one zero difference dropped
    assert ties.n_nonzero == 4 and "dropped" in ties.note
    with pytest.raises(ValueError, match="equal length"):
        st.paired_test([1, 2], [1, 2, 3])


@pytest.mark.parametrize("k,q", [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850)])
def test_nemenyi_cd_matches_demsar_table(k, q):
    n = 8
    assert st.nemenyi_cd(k, n) == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)), rel=2e-3)


def test_rank_summary_ranks_friedman_and_ties():
    scores = {
        "a": {"softmax": 0.90, "bn": 0.95, "linear": 0.80},
        "b": {"softmax": 0.85, "bn": 0.90, "linear": 0.85},  # tie softmax/linear -> 2.5 each
        "c": {"softmax": 0.70, "bn": 0.75, "linear": 0.60},
        "d": {"softmax": 0.50},  # incomplete: ignored
    }
    r = st.rank_summary(scores)
    assert r.datasets == ["a", "b", "c"]
    assert r.mean_rank["bn"] == 1.0
    assert r.mean_rank["softmax"] == pytest.approx((2 + 2.5 + 2) / 3)
    S = np.array([[scores[d][v] for v in r.variants] for d in r.datasets])
    assert r.friedman_p == pytest.approx(sps.friedmanchisquare(*S.T).pvalue)
    assert r.wilcoxon_vs["bn"].mean_diff == pytest.approx(0.05)


def test_verdict_beats_clear_effect_no_effect_and_low_power():
    clear = st.verdict_beats("bn > softmax", [3.0, 2.5, 4.0, 3.5, 2.8, 3.2, 2.9, 3.1])
    assert clear.verdict == st.SUPPORTED
    none = st.verdict_beats("bn > softmax", [0.1, -0.2, 0.0, 0.15, -0.1, 0.05, -0.05, 0.1])
    assert none.verdict == st.NOT_SUPPORTED  # CI excludes a 1-point advantage
    weak = st.verdict_beats("bn > softmax", [3.0, -2.0, 4.0])  # large, noisy, 3 datasets
    assert weak.verdict == st.INCONCLUSIVE
    assert st.verdict_beats("x", [2.0]).verdict == st.INCONCLUSIVE


def test_verdict_improves_on_one_task_from_paired_seeds():
    base = [40.0, 42.0, 38.0, 41.0]
    better = st.verdict_improves("bn+sh > softmax", [b + d for b, d in zip(base, [2.0, 2.5, 1.8, 2.2])], base)
    assert better.verdict == st.SUPPORTED and "4 paired seeds" in better.evidence
    worse = st.verdict_improves("bn+sh > softmax", [b - d for b, d in zip(base, [2.0, 2.5, 1.8, 2.2])], base)
    assert worse.verdict == st.NOT_SUPPORTED and "excludes an advantage" in worse.evidence
    noisy = st.verdict_improves("bn+sh > softmax", [b + d for b, d in zip(base, [3.0, -2.0, 1.0, -0.5])], base)
    assert noisy.verdict == st.INCONCLUSIVE
    assert st.verdict_improves("x", [1.0], [0.0]).verdict == st.INCONCLUSIVE


def test_verdict_best_and_memory():
    others = ["bn", "softmax", "linear", "sh"]
    # bn+sh first everywhere, the others rotate through ranks 2-5 (mean rank 3.5 each, CD ~ 1.36)
    scores = {f"d{i}": {"bn+sh": 0.95, **{others[(i + j) % 4]: 0.9 - 0.05 * j for j in range(4)}} for i in range(20)}
    assert st.verdict_best("bn+sh best", st.rank_summary(scores), "bn+sh").verdict == st.SUPPORTED
    ladder = {f"d{i}": {"bn+sh": 0.95, "bn": 0.90, "softmax": 0.85, "linear": 0.80, "sh": 0.75} for i in range(20)}
    assert st.verdict_best("bn+sh best", st.rank_summary(ladder), "bn+sh").verdict == st.INCONCLUSIVE  # bn within CD
    worst = st.verdict_best("sh best", st.rank_summary(ladder), "sh")
    assert worst.verdict == st.NOT_SUPPORTED and "bn+sh" in worst.evidence
    few = {f"d{i}": {"bn+sh": 0.95, "bn": 0.90, "softmax": 0.85} for i in range(2)}
    assert st.verdict_best("bn+sh best", st.rank_summary(few), "bn+sh").verdict == st.INCONCLUSIVE
    assert st.verdict_memory("m", {"sh N=1024": 0.45, "sh N=256": 0.1}).verdict == st.SUPPORTED
    assert st.verdict_memory("m", {"sh N=1024": 0.2}).verdict == st.NOT_SUPPORTED
    assert st.verdict_memory("m", {}).verdict == st.INCONCLUSIVE


def test_efficiency_csv_prefers_saved_activations(tmp_path):
    from dualattn.report.evidence import read_efficiency_csv

    p = tmp_path / "t.csv"
    p.write_text("task,seq_len,variant,path,mem_ratio,saved_ratio\n"
                 "text,4000,sh,reference,0.5,0.64\ntext,4000,bn+sh,fused,1.1,\ntext,4000,softmax,fused,1,1\n")
    red = read_efficiency_csv(p)
    assert red == {"sh text N=4000 reference saved act.": pytest.approx(0.36),
                   "bn+sh text N=4000 fused peak mem.": pytest.approx(-0.1)}
    assert st.verdict_memory("m", red).verdict == st.NOT_SUPPORTED


def test_verdict_higher_across_datasets():
    soft = [0.2, 0.3, 0.25, 0.4, 0.35, 0.3, 0.2, 0.5]
    up = st.verdict_higher_across("bn less redundant", [x + 0.3 for x in soft], soft, "head distance")
    assert up.verdict == st.SUPPORTED and "higher on 8/8" in up.evidence
    down = st.verdict_higher_across("bn less redundant", [x - 0.1 for x in soft], soft, "head distance")
    assert down.verdict == st.NOT_SUPPORTED
    mixed = st.verdict_higher_across("sh", [x + d for x, d in zip(soft, [.1, -.1, .05, -.05, .02, -.02, 0, .01])],
                                     soft, "head distance")
    assert mixed.verdict == st.INCONCLUSIVE
    assert st.verdict_higher_across("x", [1.0], [0.0], "d").verdict == st.INCONCLUSIVE
