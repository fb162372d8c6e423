"""The report's "Statistics and verdicts" section (uses :mod:`dualattn.report.stats`).

* Per dataset: mean test accuracy with 95 % t-interval over seeds, and per
  variant the paired difference to softmax over the seeds both have
  (same seeds = same splits and data), with paired t-test and Wilcoxon p.
* Across the time-series datasets: mean ranks, Friedman test, Nemenyi CD
  (plot ``critical_difference.png``), Wilcoxon on per-dataset means vs softmax.
* Claims of the seed paper, each "supported / not supported / inconclusive at
  this power" with the numbers (rules in :mod:`dualattn.report.stats`).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from dualattn.report import stats as st
from dualattn.report.aggregate import Group

VARIANT_NAMES = {"bn": "Attention-BN", "bn+sh": "BN+SH", "sh": "Attention-SH"}
BASELINE = "softmax"
#: Datasets that are not time series (long-range / image tasks); excluded from the time-series claims.
NON_TIME_SERIES_PREFIXES = ("listops", "pathfinder", "digits", "lra", "text", "retrieval", "image", "cifar")


def is_time_series(dataset: str) -> bool:
    return not dataset.lower().startswith(NON_TIME_SERIES_PREFIXES)


def _by_seed(g: Group) -> dict[int, float]:
    out = {}
    for r in g.ok_runs():
        acc, seed = r.summary.get("test_acc"), r.summary.get("seed")
        if isinstance(acc, (int, float)) and math.isfinite(acc) and isinstance(seed, int):
            out[seed] = float(acc)
    return out


def _ci(c: st.MeanCI) -> str:
    if c.n == 0:
        return "n/a"
    if c.n == 1:
        return f"{100 * c.mean:.1f} (1 seed)"
    return f"{100 * c.mean:.1f} [{100 * c.lo:.1f}, {100 * c.hi:.1f}]"


def _p(p: float) -> str:
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.3g}"


def per_dataset_table(groups: dict[str, list[Group]]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Markdown lines and ``{dataset: {variant: mean test acc}}``."""
    lines = [
        "| dataset | variant | seeds | test acc (%) mean [95 % CI] | diff to softmax (points) [95 % CI] "
        "| paired t p | Wilcoxon p |",
        "|---|---|---|---|---|---|---|",
    ]
    means: dict[str, dict[str, float]] = {}
    for ds, gs in groups.items():
        base = next((g for g in gs if g.variant == BASELINE), None)
        base_seeds = _by_seed(base) if base else {}
        for g in gs:
            accs = _by_seed(g)
            c = st.mean_ci(list(accs.values()))
            if c.n:
                means.setdefault(ds, {})[g.variant] = c.mean
            diff, tp, wp = "", "", ""
            if base is not None and g is not base:
                common = sorted(set(accs) & set(base_seeds))
                if common:
                    pt = st.paired_test([100 * accs[s] for s in common], [100 * base_seeds[s] for s in common])
                    diff = (f"{pt.mean_diff:+.2f} [{pt.ci_lo:+.2f}, {pt.ci_hi:+.2f}]" if pt.n > 1
                            else f"{pt.mean_diff:+.2f}")
                    diff += f" (n={pt.n})"
                    tp, wp = _p(pt.t_p), _p(pt.wilcoxon_p)
            lines.append(f"| {ds} | {g.variant} | {c.n} | {_ci(c)} | {diff} | {tp} | {wp} |")
    return lines, means


def read_efficiency_csv(path: str | Path) -> dict[str, float]:
    """Memory reductions of sh and bn+sh from a ``dualattn bench train-step`` CSV.

    ``1 - saved_ratio`` (saved activations: deterministic) where present, else ``1 - mem_ratio`` (peak memory).
    """
    out = {}
    with Path(path).open() as f:
        for row in csv.DictReader(f):
            if row.get("variant") not in ("sh", "bn+sh"):
                continue
            key = "saved_ratio" if row.get("saved_ratio") not in (None, "") else "mem_ratio"
            if row.get(key) in (None, ""):
                continue
            what = "saved act." if key == "saved_ratio" else "peak mem."
            try:
                out[f"{row['variant']} {row.get('task', '')} N={row.get('seq_len', '')} {row.get('path', '')} "
                    f"{what}"] = 1.0 - float(row[key])
            except ValueError:
                continue
    return out


def _act_mem_reductions(groups: dict[str, list[Group]]) -> dict[str, float]:
    out = {}
    for ds, gs in groups.items():
        base = next((g for g in gs if g.variant == BASELINE), None)
        if base is None:
            continue
        b = base.stat("act_mem_mb")[0]
        for g in gs:
            if g.variant in ("sh", "bn+sh") and b and math.isfinite(b):
                m = g.stat("act_mem_mb")[0]
                if math.isfinite(m):
                    out[f"{g.variant} {ds} (saved activations)"] = 1.0 - m / b
    return out


def statistics_section(groups: dict[str, list[Group]], root: Path, *,
                       efficiency_csv: str | Path | None = None) -> tuple[list[str], list[st.Verdict]]:
    """Markdown lines of the section and the claim verdicts."""
    from dualattn.report import plots

    table, means = per_dataset_table(groups)
    lines = ["## Statistics and verdicts", "",
             "Per dataset: mean test accuracy with the 95 % t-interval over seeds; per variant the paired "
             "difference to softmax over the seeds both have (same seed = same split and data), with the "
             "paired t-test and the Wilcoxon signed-rank test (two-sided; zero differences dropped).", ""]
    lines += table + [""]
    verdicts: list[st.Verdict] = []
    ts = {ds: row for ds, row in means.items() if is_time_series(ds)}
    ranks = None
    try:
        ranks = st.rank_summary(ts, baseline=BASELINE)
    except ValueError:
        lines += ["(rank summary needs >= 2 variants on at least one time-series dataset)", ""]
    if ranks is not None:
        lines += [f"### Ranks across {len(ranks.datasets)} time-series datasets", "",
                  "Rank 1 = highest mean test accuracy on a dataset (ties averaged). Friedman "
                  f"chi2 = {ranks.friedman_stat:.2f}, p = {_p(ranks.friedman_p)}; Nemenyi critical difference "
                  f"(alpha 0.05) CD = {ranks.cd:.2f}. Wilcoxon: signed-rank test of the per-dataset means "
                  "against softmax.", "",
                  "| variant | mean rank | mean acc diff to softmax (points) | Wilcoxon p (vs softmax) |",
                  "|---|---|---|---|"]
        for v in sorted(ranks.mean_rank, key=ranks.mean_rank.get):
            w = ranks.wilcoxon_vs.get(v)
            d = f"{100 * w.mean_diff:+.2f}" if w else ""
            lines.append(f"| {v} | {ranks.mean_rank[v]:.2f} | {d} | {_p(w.wilcoxon_p) if w else ''} |")
        lines.append("")
        if len(ranks.variants) >= 2:
            plots.critical_difference(ranks.mean_rank, ranks.cd, root / "critical_difference.png",
                                      title=f"mean rank over {len(ranks.datasets)} time-series datasets "
                                            f"(joined: |diff| < CD = {ranks.cd:.2f})")
            lines += ["![Critical-difference diagram](critical_difference.png)", ""]

    def diffs(a: str, b: str) -> list[float]:
        return [100 * (row[a] - row[b]) for row in ts.values() if a in row and b in row]

    verdicts.append(st.verdict_beats("Attention-BN beats softmax by > 1 point (time series)", diffs("bn", "softmax")))
    verdicts.append(st.verdict_beats("Attention-BN beats linear attention by > 1 point (time series)",
                                     diffs("bn", "linear")))
    if ranks is not None:
        verdicts.append(st.verdict_best("BN+SH is the best variant on time series", ranks, "bn+sh"))
    else:
        verdicts.append(st.Verdict("BN+SH is the best variant on time series", st.INCONCLUSIVE, "no rank summary"))
    dist = {ds: {g.variant: g.redundancy_mean() for g in gs} for ds, gs in groups.items() if is_time_series(ds)}
    for v in ("bn", "bn+sh", "sh"):  # the paper: less head redundancy
        common = [ds for ds, r in dist.items() if r.get(v, (0, 0, 0))[2] and r.get(BASELINE, (0, 0, 0))[2]]
        if common:
            verdicts.append(st.verdict_higher_across(
                f"{VARIANT_NAMES.get(v, v)} heads are less redundant than softmax's (time series)",
                [dist[ds][v][0] for ds in common], [dist[ds][BASELINE][0] for ds in common],
                "head distance (1 - cos)"))
    for ds, gs in groups.items():  # the paper: BN+SH also best on long-range and image tasks
        if is_time_series(ds):
            continue
        by_variant = {g.variant: _by_seed(g) for g in gs}
        if "bn+sh" in by_variant and BASELINE in by_variant:
            a, b = by_variant["bn+sh"], by_variant[BASELINE]
            common = sorted(set(a) & set(b))
            verdicts.append(st.verdict_improves(f"BN+SH beats softmax on {ds}", [100 * a[s] for s in common],
                                                [100 * b[s] for s in common]))
    if efficiency_csv is not None:
        red = read_efficiency_csv(efficiency_csv)
        mem_claim = f"SH / BN+SH reduce memory by up to 47 % (training step, {Path(efficiency_csv).name})"
    else:
        red = _act_mem_reductions(groups)
        mem_claim = "SH / BN+SH reduce memory by up to 47 % (saved activations at these runs' lengths)"
    verdicts.append(st.verdict_memory(mem_claim, red))
    lines += ["### Claims", "",
              "Rules: *beats by > 1 point*: supported if the mean per-dataset difference exceeds 1 point and the "
              "Wilcoxon signed-rank test across datasets gives p < 0.05; not supported if the 95 % CI of the "
              "mean difference lies below 1 point; otherwise inconclusive at this power. *Best*: supported if "
              "best mean rank, Friedman p < 0.05 and ahead of every other variant by more than the CD; not "
              "supported if another variant is ahead by more than the CD. *BN+SH beats softmax on a task*: supported "
              "if the paired difference over seeds is positive with paired t p < 0.05; not supported if its 95 % "
              "CI lies at or below 0; otherwise inconclusive. *Less redundant heads*: head distance (mean over head "
              "pairs of 1 - cosine of their attention rows) per dataset, supported if higher than softmax's with "
              "Wilcoxon p < 0.05 across datasets, not supported if lower with p < 0.05. *Memory*: supported if the largest "
              "measured reduction is >= 42 % (within 5 points of 47 %).", "",
              "| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {v.claim} | **{v.verdict}** | {v.evidence} |" for v in verdicts] + [""]
    return lines, verdicts


def verdict_rows(verdicts: list[st.Verdict]) -> list[dict[str, Any]]:
    return [{"claim": v.claim, "verdict": v.verdict, "evidence": v.evidence} for v in verdicts]
