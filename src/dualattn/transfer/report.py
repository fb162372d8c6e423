"""Report for ``dualattn transfer``: tables per task, width and head, plots, token-cluster maps.

``write_report(out_dir)`` reads the typed records written by
:func:`dualattn.transfer.runner.run_transfer` (``results.jsonl``,
``beta_selection.jsonl``, ``tasks.json``) and writes ``report.md``,
``summary.csv``, ``plots/{accuracy,time}.png`` and, when a task has several
widths, ``plots/accuracy-vs-width.png``.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from dualattn.transfer.records import BetaSelection, TransferResult, read_beta_selections, read_results, read_tasks

BASELINE_HEADS = ("linear-probe", "mlp")
ATTENTION_HEADS = ("linear", "gated", "relu")  # dualattn.convex self-attention head types


def load_results(out_dir: str | Path) -> list[TransferResult]:
    """Validated records of a run directory; ``FileNotFoundError`` when there are none."""
    path = Path(out_dir) / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results; run `dualattn transfer CONFIG.yaml` first")
    return read_results(out_dir)


def _ms(values: list[float | None]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def summarize(records: list[TransferResult], head_order: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (task, head, width): mean and sample std over seeds of accuracy, objective, gap, time.

    Rows follow the tasks' first appearance, then ``head_order`` (e.g. the config's), then appearance,
    then width.
    """
    groups: dict[tuple[str, str, int], list[TransferResult]] = defaultdict(list)
    for r in records:
        groups[(r.task, r.head, r.width)].append(r)
    tasks = list(dict.fromkeys(r.task for r in records))
    heads = list(dict.fromkeys([*(head_order or []), *(r.head for r in records)]))
    groups = dict(sorted(groups.items(), key=lambda kv: (tasks.index(kv[0][0]), heads.index(kv[0][1]), kv[0][2])))
    rows = []
    for (task, head, width), rs in groups.items():
        r0 = rs[0]
        row = {"task": task, "head": head, "width": width, "full_width": r0.full_width, "kind": r0.kind,
               "backbone": r0.backbone, "seeds": len(rs), "n_train": r0.n_train, "n_test": r0.n_test,
               "s": r0.tokens, "d": width, "params": r0.params, "convex_head": r0.convex_head,
               "beta": r0.beta}
        for key in ("test_acc", "train_acc", "objective", "gap", "time_s", "rel_gap"):
            row[key + "_mean"], row[key + "_std"] = _ms([getattr(r, key) for r in rs])
        row["rel_gap_max"] = max((r.rel_gap for r in rs if r.rel_gap is not None), default=math.nan)
        row["not_certified"] = sum(1 for r in rs if r.certified is False)
        rows.append(row)
    return rows


def _fmt(m: float, s: float, pct: bool = False, digits: int = 3) -> str:
    if math.isnan(m):
        return "–"
    if pct:
        return f"{100 * m:.1f} ± {100 * s:.1f}"
    return f"{m:.{digits}g} ± {s:.2g}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: test/train accuracy (%), objective, certified gap, time (s) per task, head and width."""
    head = ("| task | head | kind | d | beta | test acc % | train acc % | objective | gap (max rel.) | time s |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        gap = "–" if math.isnan(r["gap_mean"]) else f"{r['gap_mean']:.2g} ({r['rel_gap_max']:.1e})"
        if r.get("not_certified"):
            gap += f" **{r['not_certified']} not certified**"
        d = f"{r['width']}{' (full)' if r.get('full_width') else ''}"
        lines.append(f"| {r['task']} | {r['head']} | {r['kind']} | {d} | {r['beta']:g} "
                     f"| {_fmt(r['test_acc_mean'], r['test_acc_std'], True)} "
                     f"| {_fmt(r['train_acc_mean'], r['train_acc_std'], True)} "
                     f"| {_fmt(r['objective_mean'], r['objective_std'])} | {gap} "
                     f"| {_fmt(r['time_s_mean'], r['time_s_std'], digits=2)} |")
    return head + "\n".join(lines) + "\n"


def width_table(rows: list[dict[str, Any]], task: str) -> str:
    """Test accuracy (%) of one task: one row per head, one column per token width."""
    rs = [r for r in rows if r["task"] == task]
    widths = sorted({r["width"] for r in rs})
    heads = list(dict.fromkeys(r["head"] for r in rs))
    full = {r["width"] for r in rs if r.get("full_width")}
    cols = [f"d={w}{' (full)' if w in full else ''}" for w in widths]
    lines = ["| head | kind | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(widths)]
    for h in heads:
        cells = []
        for w in widths:
            r = next((r for r in rs if r["head"] == h and r["width"] == w), None)
            cells.append("" if r is None else _fmt(r["test_acc_mean"], r["test_acc_std"], True)
                         + ("\\*" if r.get("not_certified") else ""))
        kind = next(r["kind"] for r in rs if r["head"] == h)
        lines.append(f"| {h} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _verdict(best: dict, b: dict) -> str:
    diff = best["test_acc_mean"] - b["test_acc_mean"]
    noise = max(best["test_acc_std"], b["test_acc_std"])
    verdict = "beats" if diff > noise else "is worse than" if diff < -noise else "is within one std of"
    where = "" if b["width"] == best["width"] else f" (d={b['width']})"
    return f"{verdict} `{b['head']}`{where} ({100 * diff:+.1f} points)"


def claim_check(rows: list[dict[str, Any]]) -> list[str]:
    """Per task and width: does the best convex attention-type head (and the best convex head of any
    type) beat each linear-probe / MLP baseline on the same features, and the full-width reference probe?

    "Beats" = higher mean test accuracy by more than the larger of the two seed stds.
    """
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        reference = [r for r in rs if r["kind"] == "baseline" and r.get("full_width")
                     and r["head"].startswith("linear-probe")]
        for width in sorted({r["width"] for r in rs if r["kind"] == "convex"}):
            convex = [r for r in rs if r["kind"] == "convex" and r["width"] == width]
            base = [r for r in rs if r["kind"] == "baseline" and r["width"] == width
                    and any(r["head"].startswith(b) for b in BASELINE_HEADS)]
            refs = [r for r in reference if r not in base]
            attention = [r for r in convex if r.get("convex_head") in ATTENTION_HEADS]
            for label, group in (("attention-type", attention), ("any type", convex)):
                if not group or not (base or refs):
                    continue
                best = max(group, key=lambda r: r["test_acc_mean"])
                text = (f"- **{task}**, d={width}, best convex head of {label}: `{best['head']}` "
                        f"({100 * best['test_acc_mean']:.1f} %) ")
                parts = [_verdict(best, b) for b in base]
                text += "; ".join(parts) + ("." if parts else "")
                if refs:
                    text += " Against the full-width reference: " + "; ".join(_verdict(best, b) for b in refs) + "."
                out.append(text)
    return out


def objective_comparison(rows: list[dict[str, Any]], records: list[TransferResult]) -> list[str]:
    """Adam-trained nonconvex heads vs the convex optimum of the same program (same seed, split, width)."""
    key_of = lambda r: (r.task, r.seed, r.width, r.convex_head)
    convex = {key_of(r): r for r in records if r.kind == "convex"}
    diffs: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for r in records:
        if r.kind != "nonconvex" or key_of(r) not in convex:
            continue
        c = convex[key_of(r)].objective
        diffs[(r.task, r.head, r.width)].append((r.objective - c) / max(abs(c), 1e-12))
    return [f"- {task} / `{head}` (d={width}): objective exceeds the convex optimum by "
            f"{100 * np.mean(v):.1f} % (mean over {len(v)} seeds; min {100 * np.min(v):.1f} %)"
            for (task, head, width), v in diffs.items()]


def not_certified(records: list[TransferResult], selections: list[BetaSelection]) -> list[str]:
    """Every convex solve whose relative gap missed the run's ``certify_tol`` (fits and beta search)."""
    out = [f"- {r.task} / `{r.head}` d={r.width} seed {r.seed}: status `{r.status}`, rel. gap "
           f"{'–' if r.rel_gap is None else f'{r.rel_gap:.1e}'} after {r.iterations} iterations"
           for r in records if r.kind == "convex" and r.certified is False]
    for s in selections:
        for beta, info in s.solves.items():
            if info.certified is False:
                out.append(f"- beta search {s.task} / `{s.head}` d={s.width} beta={float(beta):g}: status "
                           f"`{info.status}`, rel. gap {'–' if info.rel_gap is None else f'{info.rel_gap:.1e}'}")
    return out


def beta_table(selections: list[BetaSelection]) -> str:
    """Selected beta per (task, head, width) with the grid tried, its extensions and edge warnings."""
    lines = ["| task | head | d | beta | grid tried | extended by | at grid edge |", "|---|---|---|---|---|---|---|"]
    for s in selections:
        lines.append(f"| {s.task} | {s.head} | {s.width} | {s.beta:g} | {', '.join(f'{b:g}' for b in s.grid)} "
                     f"| {', '.join(f'{b:g}' for b in s.extended) or '–'} "
                     f"| {('**' + s.at_edge + '**') if s.at_edge else 'no'} |")
    return "\n".join(lines) + "\n"


def plot_width(rows: list[dict[str, Any]], path: Path) -> Path:
    """Test accuracy vs token width per head (one panel per task; mean ± std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    heads = list(dict.fromkeys(r["head"] for r in rows))
    colors = plt.get_cmap("tab20" if len(heads) > 10 else "tab10").colors
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks) + 2, 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        widths = sorted({r["width"] for r in rows if r["task"] == task})
        for j, h in enumerate(heads):
            rs = sorted((r for r in rows if r["task"] == task and r["head"] == h), key=lambda r: r["width"])
            if not rs:
                continue
            style = "--" if rs[0]["kind"] == "baseline" else ":" if rs[0]["kind"] == "nonconvex" else "-"
            ax.errorbar([r["width"] for r in rs], [100 * r["test_acc_mean"] for r in rs],
                        yerr=[100 * r["test_acc_std"] for r in rs], marker="o", ls=style, capsize=3,
                        color=colors[j % len(colors)], label=h)
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.set_xlabel("token width d (PCA; largest = backbone width, no PCA)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(r: dict[str, Any], multi_width: bool) -> str:
    return f"{r['head']} (d={r['width']})" if multi_width else r["head"]


def plot_bars(rows: list[dict[str, Any]], key: str, path: Path, ylabel: str, log: bool = False) -> Path:
    """Grouped bar chart (tasks x heads, and widths when there are several) of ``key`` mean with std bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    multi = len({r["width"] for r in rows if not r.get("full_width")}) > 1
    labels = list(dict.fromkeys(_label(r, multi) for r in rows))
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(tasks) * max(1, len(labels) / 4)), 4))
    colors = plt.get_cmap("tab20" if len(labels) > 10 else "tab10").colors
    scale = 100 if key.endswith("acc") else 1
    for j, h in enumerate(labels):
        pick = [next((r for r in rows if r["task"] == t and _label(r, multi) == h), None) for t in tasks]
        m = [np.nan if r is None else r[key + "_mean"] for r in pick]
        s = [np.nan if r is None else r[key + "_std"] for r in pick]
        ax.bar(np.arange(len(tasks)) + (j - (len(labels) - 1) / 2) * width, np.array(m) * scale,
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
    if not records:
        raise FileNotFoundError(f"{out / 'results.jsonl'}: no results yet")
    selections = read_beta_selections(out)
    order = None
    if (out / "config.yaml").is_file():
        import yaml

        order = [h["name"] for h in (yaml.safe_load((out / "config.yaml").read_text()) or {}).get("heads", [])]
    rows = summarize(records, order)
    tasks = read_tasks(out)
    for r in rows:  # records from before the schema do not say whether the width was the backbone's
        if r["full_width"] is None and r["task"] in tasks:
            r["full_width"] = r["width"] == tasks[r["task"]].dim_raw
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plots = out / "plots"
    plot_bars(rows, "test_acc", plots / "accuracy.png", "test accuracy (%)")
    plot_bars(rows, "time_s", plots / "time.png", "fit time (s, log)", log=True)
    multi_width = any(len({r["width"] for r in rows if r["task"] == t}) > 1 for t in {r["task"] for r in rows})
    if multi_width:
        plot_width(rows, plots / "accuracy-vs-width.png")
    lines = ["# Transfer learning: convex vs baseline heads on frozen backbones", ""]
    for name, t in tasks.items():
        lines.append(f"- **{name}**: backbone `{t.backbone}`, {t.n} examples ({t.description}); "
                     f"{t.tokens_raw} tokens x {t.dim_raw} reduced to s={t.tokens} tokens x "
                     f"d in {t.widths} (PCA fitted on the training split; d={t.dim_raw} = no PCA); "
                     f"backbone load + feature extraction (or cache read) {t.load_and_extract_s:.0f} s "
                     "in the last run.")
    lines += ["", "Mean ± sample std over seeds (each seed = a different split and head init). "
              "Objective = summed loss + beta·penalty (the convex program's scale); "
              "gap = certified duality gap of the convex solve (largest relative gap over seeds). "
              "Times are wall-clock on a shared CPU (noisy).", ""]
    if multi_width:
        lines += ["## Test accuracy (%) per width", ""]
        for task in dict.fromkeys(r["task"] for r in rows):
            lines += [f"**{task}** (\\* = some convex solve not certified)", "", width_table(rows, task)]
        lines += ["![accuracy vs width](plots/accuracy-vs-width.png)", ""]
    lines += ["## All results", "", markdown_table(rows)]
    uncert = not_certified(records, selections)
    lines += ["## Convex solves not certified", ""]
    lines += uncert or ["- none: every convex solve reached its target relative duality gap."]
    if selections:
        lines += ["", "## Choice of beta", "",
                  "Best validation accuracy on the first seed (ties: larger beta); a grid whose best value "
                  "sat at one end was extended by one decade on that side.", "", beta_table(selections)]
        edge = [s for s in selections if s.at_edge]
        if edge:
            lines += ["Still at a grid edge after the extension limit: " + ", ".join(
                f"{s.task}/`{s.head}` d={s.width} ({s.at_edge})" for s in edge) + ".", ""]
    lines += ["", "## Does the paper's claim hold here?", "",
              "Claim (Sahiner et al. 2022): attention-type convex heads beat linear and MLP heads.", ""]
    lines += claim_check(rows) or ["- (no convex heads in this run)"]
    comp = objective_comparison(rows, records)
    if comp:
        lines += ["", "## Adam-trained nonconvex heads vs the convex optimum", ""] + comp
    lines += ["", "## Plots", "", "![accuracy](plots/accuracy.png)", "", "![time](plots/time.png)", ""]
    for r in records:
        p = r.extra.get("cluster_plot")
        if p:  # stored relative to the run directory
            p = Path(p)
            if p.is_absolute() or not (out / p).is_file():  # older runs stored the path as written
                p = Path(*p.parts[p.parts.index("plots"):]) if "plots" in p.parts else p
            lines += [f"Token clusters, {r.task} / {r.head} d={r.width} (seed {r.seed}, test images; "
                      f"CLS token dropped):", "", f"![clusters]({p.as_posix()})", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"
