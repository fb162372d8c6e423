"""Statistics that decide the paper's claims (``scipy.stats``).

Accuracies are given as fractions and reported in percentage points.

* :func:`mean_ci` - mean and two-sided t-interval ``m +- t_{1-a/2, n-1} s / sqrt(n)``.
* :func:`paired_test` - paired difference ``d_s = a_s - b_s`` over the same
  seeds/splits: mean, t-interval, paired t-test (``scipy.stats.ttest_rel``)
  and Wilcoxon signed-rank (``scipy.stats.wilcoxon``, zero differences
  dropped, exact p-value when there are no ties, normal approximation otherwise).
* :func:`rank_summary` - across datasets: ranks per dataset (1 = best, ties
  averaged), mean rank per variant, Friedman test, Nemenyi critical difference
  ``CD = q_a sqrt(k (k + 1) / (6 n))`` with ``q_a`` the studentized range
  quantile over ``sqrt 2`` (Demsar 2006).
* Verdicts (``supported / not supported / inconclusive at this power``):
  :func:`verdict_beats`, :func:`verdict_best`, :func:`verdict_memory`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as sps

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
INCONCLUSIVE = "inconclusive at this power"
ALPHA = 0.05


def _clean(values: Sequence[float]) -> np.ndarray:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return v[np.isfinite(v)]


# --------------------------------------------------------------------------- #
# One sample / paired samples
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class MeanCI:
    """Mean, sample std and two-sided t confidence interval (NaN bounds when n < 2)."""

    mean: float
    std: float
    lo: float
    hi: float
    n: int


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """``m +- t_{(1+c)/2, n-1} s / sqrt(n)`` over the finite values (zero-width when all equal)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    v = _clean(values)
    n = int(v.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, math.nan, 0)
    m = float(v.mean())
    if n == 1:
        return MeanCI(m, math.nan, math.nan, math.nan, 1)
    s = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * s / math.sqrt(n)
    return MeanCI(m, s, m - half, m + half, n)


@dataclass(frozen=True)
class PairedTest:
    """``a - b`` over paired samples: mean difference with t-interval, paired t-test, Wilcoxon."""

    n: int
    mean_diff: float
    ci_lo: float
    ci_hi: float
    t_stat: float
    t_p: float
    wilcoxon_stat: float
    wilcoxon_p: float
    n_nonzero: int
    note: str = ""


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedTest:
    """Paired comparison of ``a`` and ``b`` (same length, element ``i`` of both from the same seed/split).

    Degenerate cases: all differences zero -> both p-values 1; constant non-zero
    differences -> t-test undefined (p NaN, noted), Wilcoxon still defined.
    """
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(f"a, b: expected two 1-D sequences of equal length, got {a_arr.shape} and {b_arr.shape}")
    keep = np.isfinite(a_arr) & np.isfinite(b_arr)
    d = a_arr[keep] - b_arr[keep]
    n = int(d.size)
    ci = mean_ci(d, confidence)
    nz = int(np.count_nonzero(d))
    note = ""
    if n < 2:
        return PairedTest(n, ci.mean, ci.lo, ci.hi, math.nan, math.nan, math.nan, math.nan, nz,
                          "fewer than 2 pairs: no test")
    if nz == 0:
        return PairedTest(n, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0, "all differences are zero")
    if np.allclose(d, d[0], rtol=1e-12, atol=1e-12):
        t_stat, t_p = math.copysign(math.inf, d[0]), math.nan
        note = "constant non-zero difference: t-test undefined"
    else:
        res = sps.ttest_rel(a_arr[keep], b_arr[keep])
        t_stat, t_p = float(res.statistic), float(res.pvalue)
    w = sps.wilcoxon(d, zero_method="wilcox")
    if nz < n:
        note = (note + "; " if note else "") + f"{n - nz} zero difference(s) dropped by Wilcoxon"
    return PairedTest(n, ci.mean, ci.lo, ci.hi, t_stat, t_p, float(w.statistic), float(w.pvalue), nz, note)


# --------------------------------------------------------------------------- #
# Across datasets
# --------------------------------------------------------------------------- #
def nemenyi_cd(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference of mean ranks for ``k`` methods on ``n`` datasets."""
    if k < 2 or n < 1:
        raise ValueError(f"k >= 2 methods and n >= 1 datasets needed, got k={k}, n={n}")
    q = float(sps.studentized_range.ppf(1 - alpha, k, 1e6)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6.0 * n))


@dataclass
class RankSummary:
    """Ranks of ``variants`` over ``datasets`` (higher score = better = rank 1)."""

    datasets: list[str]
    variants: list[str]
    scores: np.ndarray  # (n_datasets, k_variants)
    ranks: np.ndarray
    mean_rank: dict[str, float]
    friedman_stat: float
    friedman_p: float
    cd: float
    wilcoxon_vs: dict[str, PairedTest] = field(default_factory=dict)  # per-dataset means vs the baseline


def rank_summary(scores: Mapping[str, Mapping[str, float]], baseline: str = "softmax",
                 alpha: float = ALPHA) -> RankSummary:
    """``scores[dataset][variant]`` (e.g. mean test accuracy); only datasets with every variant are used."""
    variants = sorted({v for row in scores.values() for v in row})
    datasets = sorted(ds for ds, row in scores.items()
                      if all(v in row and row[v] is not None and math.isfinite(row[v]) for v in variants))
    if len(variants) < 2 or not datasets:
        raise ValueError(f"rank_summary: need >= 2 variants on >= 1 common dataset, got {variants} / {datasets}")
    S = np.array([[scores[ds][v] for v in variants] for ds in datasets], dtype=float)
    R = np.vstack([sps.rankdata(-row, method="average") for row in S])
    mean_rank = {v: float(R[:, j].mean()) for j, v in enumerate(variants)}
    f_stat, f_p = math.nan, math.nan  # Friedman needs >= 3 variants, >= 2 datasets, not all rows tied
    if len(variants) >= 3 and len(datasets) >= 2 and not np.all(S == S[:, :1]):
        fr = sps.friedmanchisquare(*S.T)
        f_stat, f_p = float(fr.statistic), float(fr.pvalue)
    out = RankSummary(datasets, variants, S, R, mean_rank, f_stat, f_p, nemenyi_cd(len(variants), len(datasets), alpha))
    if baseline in variants:
        jb = variants.index(baseline)
        for j, v in enumerate(variants):
            if v != baseline:
                out.wilcoxon_vs[v] = paired_test(S[:, j], S[:, jb])
    return out


# --------------------------------------------------------------------------- #
# Verdicts
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Verdict:
    claim: str
    verdict: str
    evidence: str


def verdict_beats(claim: str, diffs_points: Sequence[float], margin: float = 1.0, alpha: float = ALPHA) -> Verdict:
    """Claim "A beats B by more than ``margin`` points" from per-dataset mean differences ``A - B`` (points).

    supported: mean difference > margin and the Wilcoxon signed-rank test across
    datasets rejects "no difference" (two-sided p < alpha) in A's favour;
    not supported: the upper end of the 95 % t-interval of the mean difference
    is below ``margin`` (a margin-sized advantage is excluded);
    otherwise inconclusive at this power.
    """
    d = _clean(diffs_points)
    if d.size < 2:
        return Verdict(claim, INCONCLUSIVE, f"only {d.size} dataset(s) with paired results")
    pt = paired_test(d, np.zeros_like(d))
    ev = (f"mean difference {pt.mean_diff:+.2f} points over {d.size} datasets "
          f"(95 % CI {pt.ci_lo:+.2f} to {pt.ci_hi:+.2f}), Wilcoxon p = {_p(pt.wilcoxon_p)}, "
          f"positive on {int((d > 0).sum())}/{d.size}")
    if pt.mean_diff > margin and pt.wilcoxon_p < alpha:
        return Verdict(claim, SUPPORTED, ev)
    if math.isfinite(pt.ci_hi) and pt.ci_hi < margin:
        return Verdict(claim, NOT_SUPPORTED, ev + f"; the CI excludes a {margin:g}-point advantage")
    return Verdict(claim, INCONCLUSIVE, ev)


def verdict_improves(claim: str, a_points: Sequence[float], b_points: Sequence[float],
                     alpha: float = ALPHA) -> Verdict:
    """Claim "A beats B" on one dataset from paired per-seed accuracies (points, same seeds).

    supported: mean of ``a - b`` > 0 and the paired t-test gives p < alpha;
    not supported: the upper end of the 95 % t-interval of the difference is <= 0
    (no advantage is compatible with the seeds); otherwise inconclusive at this power.
    """
    pt = paired_test(a_points, b_points)
    if pt.n < 2:
        return Verdict(claim, INCONCLUSIVE, f"only {pt.n} paired seed(s)")
    ev = (f"difference {pt.mean_diff:+.2f} points over {pt.n} paired seeds (95 % CI {pt.ci_lo:+.2f} to "
          f"{pt.ci_hi:+.2f}), paired t p = {_p(pt.t_p)}")
    if pt.mean_diff > 0 and math.isfinite(pt.t_p) and pt.t_p < alpha:
        return Verdict(claim, SUPPORTED, ev)
    if math.isfinite(pt.ci_hi) and pt.ci_hi <= 0:
        return Verdict(claim, NOT_SUPPORTED, ev + "; the CI excludes an advantage")
    return Verdict(claim, INCONCLUSIVE, ev)


def verdict_higher_across(claim: str, a: Sequence[float], b: Sequence[float], what: str,
                          alpha: float = ALPHA) -> Verdict:
    """Claim "A's ``what`` is higher than B's" from per-dataset means (paired by dataset).

    supported: higher on average and the Wilcoxon signed-rank test across
    datasets gives p < alpha; not supported: lower on average with p < alpha;
    otherwise inconclusive at this power.
    """
    pt = paired_test(a, b)
    if pt.n < 2:
        return Verdict(claim, INCONCLUSIVE, f"only {pt.n} dataset(s) with both")
    a_arr, b_arr = np.asarray(a, float), np.asarray(b, float)
    ev = (f"mean {what} {np.mean(a_arr):.2f} vs {np.mean(b_arr):.2f} over {pt.n} datasets, higher on "
          f"{int((a_arr > b_arr).sum())}/{pt.n}, Wilcoxon p = {_p(pt.wilcoxon_p)}")
    if math.isfinite(pt.wilcoxon_p) and pt.wilcoxon_p < alpha:
        return Verdict(claim, SUPPORTED if pt.mean_diff > 0 else NOT_SUPPORTED, ev)
    return Verdict(claim, INCONCLUSIVE, ev)


def verdict_best(claim: str, ranks: RankSummary, variant: str) -> Verdict:
    """Claim "``variant`` is best": mean ranks, Friedman test and Nemenyi CD.

    supported: best mean rank, Friedman p < alpha and ahead of every other
    variant by more than the CD; not supported: another variant's mean rank is
    better by more than the CD; otherwise inconclusive at this power.
    """
    if variant not in ranks.mean_rank:
        return Verdict(claim, INCONCLUSIVE, f"{variant} has no results on the common datasets")
    mr = ranks.mean_rank
    order = sorted(mr, key=mr.get)
    ev = (f"mean ranks over {len(ranks.datasets)} datasets: " + ", ".join(f"{v} {mr[v]:.2f}" for v in order)
          + f"; Friedman p = {_p(ranks.friedman_p)}; Nemenyi CD = {ranks.cd:.2f}")
    others = [v for v in mr if v != variant]
    if (order[0] == variant and ranks.friedman_p < ALPHA
            and all(mr[o] - mr[variant] > ranks.cd for o in others)):
        return Verdict(claim, SUPPORTED, ev)
    better = [o for o in others if mr[variant] - mr[o] > ranks.cd]
    if better:
        return Verdict(claim, NOT_SUPPORTED, ev + f"; significantly better ranked: {', '.join(better)}")
    return Verdict(claim, INCONCLUSIVE, ev)


def verdict_memory(claim: str, reductions: Mapping[str, float], claimed: float = 0.47,
                   tolerance: float = 0.05) -> Verdict:
    """Claim "memory reduced by up to ``claimed``" from measured reductions ``1 - mem/mem_softmax`` per setting.

    supported: the largest reduction is within ``tolerance`` of the claim or above;
    not supported otherwise (memory measurements are deterministic, no test needed).
    """
    vals = {k: float(v) for k, v in reductions.items() if v is not None and math.isfinite(v)}
    if not vals:
        return Verdict(claim, INCONCLUSIVE, "no memory measurements")
    best = max(vals, key=vals.get)
    worst = min(vals, key=vals.get)
    ev = (f"largest reduction {100 * vals[best]:.0f} % ({best}), smallest {100 * vals[worst]:.0f} % ({worst}), "
          f"{len(vals)} settings")
    return Verdict(claim, SUPPORTED if vals[best] >= claimed - tolerance else NOT_SUPPORTED, ev)


def _p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return f"{p:.3g}"
