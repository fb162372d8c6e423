"""Report for ``dualattn transfer``: table (mean +- std over seeds), plots, token-cluster maps.

``write_report(out_dir)`` reads ``results.jsonl`` / ``tasks.json`` written by
:func:`dualattn.train.transfer.run_transfer` and writes ``report.md``,
``summary.csv`` and ``plots/{accuracy,time}.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

BASELINE_HEADS = ("linear-probe", "mlp")
ATTENTION_HEADS = ("linear", "gated", "relu")  # dualattn.convex self-attention head types


def load_results(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results; run `dualattn transfer CONFIG.yaml` first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ms(values: list[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(records: list[dict[str, Any]], head_order: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (task, head): mean and sample std over seeds of accuracy, objective, gap, time.

    Rows follow the tasks' first appearance, then ``head_order`` (e.g. the config's), then appearance.
    """
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["task"], r["head"])].append(r)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    heads = list(dict.fromkeys([*(head_order or []), *(r["head"] for r in records)]))
    groups = dict(sorted(groups.items(), key=lambda kv: (tasks.index(kv[0][0]), heads.index(kv[0][1]))))
    rows = []
    for (task, head), rs in groups.items():
        row = {"task": task, "head": head, "kind": rs[0].get("kind", ""), "backbone": rs[0].get("backbone", ""),
               "seeds": len(rs), "n_train": rs[0]["n_train"], "n_test": rs[0]["n_test"], "s": rs[0]["s"],
               "d": rs[0]["d"], "params": rs[0].get("params"),
               "convex_head": rs[0].get("extra", {}).get("convex_head")}
        for key in ("test_acc", "train_acc", "objective", "gap", "time_s"):
            row[key + "_mean"], row[key + "_std"] = _ms([r.get(key) for r in rs])
        rel = [r.get("extra", {}).get("rel_gap") for r in rs]
        row["rel_gap_mean"], _ = _ms(rel)
        rows.append(row)
    return rows


def _fmt(m: float, s: float, pct: bool = False, digits: int = 3) -> str:
    if math.isnan(m):
        return "–"
    if pct:
        return f"{100 * m:.1f} ± {100 * s:.1f}"
    return f"{m:.{digits}g} ± {s:.2g}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: test/train accuracy (%), objective, certified gap, time (s) per task and head."""
    head = ("| task | head | kind | test acc % | train acc % | objective | gap (rel.) | time s |\n"
            "|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        gap = "–" if math.isnan(r["gap_mean"]) else f"{r['gap_mean']:.2g} ({r['rel_gap_mean']:.1e})"
        lines.append(f"| {r['task']} | {r['head']} | {r['kind']} | {_fmt(r['test_acc_mean'], r['test_acc_std'], True)} "
                     f"| {_fmt(r['train_acc_mean'], r['train_acc_std'], True)} "
                     f"| {_fmt(r['objective_mean'], r['objective_std'])} | {gap} "
                     f"| {_fmt(r['time_s_mean'], r['time_s_std'], digits=2)} |")
    return head + "\n".join(lines) + "\n"


def claim_check(rows: list[dict[str, Any]]) -> list[str]:
    """Per task: does the best convex attention-type head (and the best convex head of any type)
    beat each linear-probe / MLP baseline on the same features?

    "Beats" = higher mean test accuracy by more than the larger of the two seed stds.
    """
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        convex = [r for r in rs if r["kind"] == "convex"]
        if not convex:
            continue
        base = [r for r in rs if r["kind"] == "baseline" and r["d"] == convex[0]["d"]
                and any(r["head"].startswith(b) for b in BASELINE_HEADS)]
        attention = [r for r in convex if r.get("convex_head") in ATTENTION_HEADS]
        for label, group in (("attention-type", attention), ("any type", convex)):
            if not group or not base:
                continue
            best = max(group, key=lambda r: r["test_acc_mean"])
            parts = []
            for b in base:
                diff = best["test_acc_mean"] - b["test_acc_mean"]
                noise = max(best["test_acc_std"], b["test_acc_std"])
                verdict = ("beats" if diff > noise else "is worse than" if diff < -noise
                           else "is within one std of")
                parts.append(f"{verdict} `{b['head']}` ({100 * diff:+.1f} points)")
            out.append(f"- **{task}**, best convex head of {label}: `{best['head']}` "
                       f"({100 * best['test_acc_mean']:.1f} %) " + "; ".join(parts) + ".")
    return out


def objective_comparison(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[str]:
    """Adam-trained nonconvex heads vs the convex optimum of the same program (same seed and split)."""
    key_of = lambda r: (r["task"], r["seed"], r.get("extra", {}).get("convex_head"))
    convex = {key_of(r): r for r in records if r.get("kind") == "convex"}
    diffs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        if r.get("kind") != "nonconvex":
            continue
        key = key_of(r)
        if key in convex:
            c = convex[key]["objective"]
            diffs[(r["task"], r["head"])].append((r["objective"] - c) / max(abs(c), 1e-12))
    return [f"- {task} / `{head}`: objective exceeds the convex optimum by "
            f"{100 * np.mean(v):.1f} % (mean over {len(v)} seeds; min {100 * np.min(v):.1f} %)"
            for (task, head), v in diffs.items()]


def plot_bars(rows: list[dict[str, Any]], key: str, path: Path, ylabel: str, log: bool = False) -> Path:
    """Grouped bar chart (tasks x heads) of ``key`` mean with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    heads = list(dict.fromkeys(r["head"] for r in rows))
    width = 0.8 / max(len(heads), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(tasks) * max(1, len(heads) / 4)), 4))
    colors = plt.get_cmap("tab20" if len(heads) > 10 else "tab10").colors
    for j, h in enumerate(heads):
        m = [next((r[key + "_mean"] for r in rows if r["task"] == t and r["head"] == h), np.nan) for t in tasks]
        s = [next((r[key + "_std"] for r in rows if r["task"] == t and r["head"] == h), np.nan) for t in tasks]
        scale = 100 if key.endswith("acc") else 1
        ax.bar(np.arange(len(tasks)) + (j - (len(heads) - 1) / 2) * width, np.array(m) * scale,
               width, yerr=np.array(s) * scale, capsize=3, label=h, color=colors[j % len(colors)])
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def token_cluster_maps(convex_fit, X, y, s: int, path: str | Path, classes=None, images=None,
                       n_images: int = 8, n_clusters: int = 3) -> Path:
    """Token-cluster maps of a fitted convex self-attention head over the pooled patch grid.

    Uses :func:`dualattn.convex.interpret.token_clusters` (spectral clustering of the
    head's token affinities) on ``X (n, s, d)`` = CLS + ``g x g`` pooled grid, drops
    the CLS token and draws the ``g x g`` labels over ``images`` when given.
    """
    from dualattn.convex import interpret

    g = int(round((s - 1) ** 0.5))
    if g * g != s - 1:
        raise ValueError(f"s: token-cluster maps need s = 1 + g^2 (CLS + patch grid), got {s}")
    import torch

    k = min(n_images, len(X))
    Xt = torch.as_tensor(np.asarray(X[:k]), dtype=torch.float64)
    labels = interpret.token_clusters(convex_fit, Xt, n_clusters)[:, 1:]
    titles = [f"label {classes[int(t)] if classes else int(t)}" for t in np.asarray(y[:k])]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = interpret.plot_token_clusters(labels, grid=(g, g), images=None if images is None else images[:k],
                                        path=path, titles=titles, max_samples=k)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_report(out_dir: str | Path) -> Path:
    """Write ``report.md``, ``summary.csv`` and plots for a transfer run directory."""
    out = Path(out_dir)
    records = load_results(out)
    order = None
    if (out / "config.yaml").is_file():
        import yaml

        order = [h["name"] for h in (yaml.safe_load((out / "config.yaml").read_text()) or {}).get("heads", [])]
    rows = summarize(records, order)
    tasks = json.loads((out / "tasks.json").read_text()) if (out / "tasks.json").is_file() else {}
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plots = out / "plots"
    plot_bars(rows, "test_acc", plots / "accuracy.png", "test accuracy (%)")
    plot_bars(rows, "time_s", plots / "time.png", "fit time (s, log)", log=True)
    lines = ["# Transfer learning: convex vs baseline heads on frozen backbones", ""]
    for name, t in tasks.items():
        lines.append(f"- **{name}**: backbone `{t['backbone']}`, {t['n']} examples ({t['description']}); "
                     f"{t['tokens_raw']} tokens x {t['dim_raw']} reduced to s={t['tokens']} tokens x "
                     f"d={t['pca_dim']} (PCA fitted on the training split); backbone load + feature "
                     f"extraction (or cache read) {t['load_and_extract_s']:.0f} s in the last run.")
    lines += ["", "Mean ± sample std over seeds (each seed = a different split and head init). "
              "Objective = summed loss + beta·penalty (the convex program's scale); "
              "gap = certified duality gap of the convex solve. Times are wall-clock on a shared CPU (noisy).",
              "", markdown_table(rows), "## Does the paper's claim hold here?", "",
              "Claim (Sahiner et al. 2022): attention-type convex heads beat linear and MLP heads.", ""]
    lines += claim_check(rows) or ["- (no convex heads in this run)"]
    comp = objective_comparison(rows, records)
    if comp:
        lines += ["", "## Adam-trained nonconvex heads vs the convex optimum", ""] + comp
    lines += ["", "## Plots", "", "![accuracy](plots/accuracy.png)", "", "![time](plots/time.png)", ""]
    for r in records:
        p = r.get("extra", {}).get("cluster_plot")
        if p:  # stored relative to the run directory
            p = Path(p)
            if p.is_absolute() or not (out / p).is_file():  # older runs stored the path as written
                p = Path(*p.parts[p.parts.index("plots"):]) if "plots" in p.parts else p
            lines += [f"Token clusters, {r['task']} / {r['head']} (seed {r['seed']}, test images; "
                      f"CLS token dropped):", "", f"![clusters]({p.as_posix()})", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"
