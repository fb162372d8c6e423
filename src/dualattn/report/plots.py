"""PNG plots for a report: learning curves, accuracy per variant, redundancy per layer, attention maps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dualattn.report.aggregate import Group


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, plt, w: float = 4.2, h: float = 3.2):
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def _val_curve(group: Group) -> tuple[np.ndarray, np.ndarray]:
    from dualattn.train.callbacks import read_metrics_csv

    curves = [np.array([r["val_acc"] for r in read_metrics_csv(run.path / "metrics.csv")]) for run in group.ok_runs()]
    curves = [c for c in curves if c.size]
    if not curves:
        return np.zeros(0), np.zeros(0)
    L = max(len(c) for c in curves)
    a = np.full((len(curves), L), np.nan)
    for i, c in enumerate(curves):
        a[i, : len(c)] = c
    return np.arange(L), np.nanmean(a, 0)


def learning_curves(groups: dict[str, list[Group]], path: Path) -> Path:
    """Validation accuracy per epoch (mean over seeds still running) per dataset and variant."""
    plt = _plt()
    fig, axes = _grid(len(groups), plt)
    for ax, (ds, gs) in zip(axes, groups.items()):
        for g in gs:
            x, y = _val_curve(g)
            if x.size:
                ax.plot(x, 100 * y, label=g.variant)
        ax.set_title(ds)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def accuracy_vs_variant(groups: dict[str, list[Group]], path: Path) -> Path:
    """Test accuracy mean +- std over seeds per variant (one panel per dataset)."""
    plt = _plt()
    fig, axes = _grid(len(groups), plt)
    for ax, (ds, gs) in zip(axes, groups.items()):
        stats = [g.stat("test_acc") for g in gs]
        x = np.arange(len(gs))
        # points + error bars (not bars): the y axis is zoomed to the data
        ax.errorbar(x, [100 * m for m, _, _ in stats], yerr=[100 * s for _, s, _ in stats], fmt="o", capsize=4)
        ax.set_xticks(x, [g.variant for g in gs], rotation=30)
        ok = [(m, s) for m, s, _ in stats if not math.isnan(m)]
        if ok:
            lo = min(100 * (m - s) for m, s in ok)
            hi = max(100 * (m + s) for m, s in ok)
            pad = max(1.0, 0.15 * (hi - lo))
            ax.set_ylim(max(0, lo - pad), min(100, hi + pad))
        ax.set_xlim(-0.5, len(gs) - 0.5)
        ax.set_title(ds)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def redundancy_per_layer(groups: dict[str, list[Group]], path: Path) -> Path:
    """Head redundancy (1 - cosine, mean over head pairs) per layer and variant."""
    plt = _plt()
    fig, axes = _grid(len(groups), plt)
    for ax, (ds, gs) in zip(axes, groups.items()):
        width = 0.8 / max(1, len(gs))
        depth = 0
        for i, g in enumerate(gs):
            m, s = g.redundancy_per_layer()
            if m.size:
                depth = max(depth, m.size)
                x = np.arange(m.size) + (i - (len(gs) - 1) / 2) * width
                ax.bar(x, m, width, yerr=s, capsize=2, label=g.variant)
        ax.set_xticks(np.arange(depth), [str(i) for i in range(depth)])
        ax.set_xlabel("layer")
        ax.set_ylabel("head distance (1 - cos)")
        ax.set_title(ds)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def attention_maps(dataset: str, gs: list[Group], path: Path, layer: int = -1) -> Path | None:
    """Attention maps of the first validation sample (lowest seed) for each variant and head."""
    samples = []
    for g in gs:
        runs = sorted(g.ok_runs(), key=lambda r: r.summary.get("seed", 0))
        for r in runs:
            f = r.path / "attention_sample.npz"
            if f.is_file():
                with np.load(f) as z:
                    layers = sorted(k for k in z.files if k.startswith("layer"))
                    if layers:
                        samples.append((g.variant, z[layers[layer]], layers[layer]))
                break
    if not samples:
        return None
    plt = _plt()
    H = max(s[1].shape[0] for s in samples)
    fig, axes = plt.subplots(len(samples), H, figsize=(1.9 * H + 0.5, 1.9 * len(samples) + 0.4), squeeze=False)
    for row, (variant, w, lname) in enumerate(samples):
        for h in range(H):
            ax = axes[row][h]
            ax.set_xticks([])
            ax.set_yticks([])
            if h < w.shape[0]:
                ax.imshow(w[h], cmap="viridis", aspect="auto")
            if row == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(variant, fontsize=8)
    fig.suptitle(f"{dataset}: attention maps ({samples[0][2]}, one validation sample; rows=queries, cols=keys)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def critical_difference(mean_rank: dict[str, float], cd: float, path: Path, *, title: str = "") -> Path:
    """Critical-difference diagram (Demsar 2006): mean ranks on an axis (1 = best, left), a bar
    of length CD, and thick lines joining variants whose mean ranks differ by less than CD."""
    plt = _plt()
    names = sorted(mean_rank, key=mean_rank.get)
    k = len(names)
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.32 * k))
    lo, hi = 1, max(k, 2)
    ax.set_xlim(lo - 0.3, hi + 0.3)
    ax.set_ylim(-(k + 1.5), 1.6)
    ax.axhline(0, color="k", lw=1)
    for r in range(lo, hi + 1):
        ax.plot([r, r], [0, 0.15], color="k", lw=1)
        ax.text(r, 0.3, str(r), ha="center", va="bottom", fontsize=8)
    ax.plot([lo, lo + cd], [1.2, 1.2], color="k", lw=2)
    ax.text(lo + cd / 2, 1.3, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    for i, v in enumerate(names):
        y = -(i + 1)
        r = mean_rank[v]
        ax.plot([r, r], [0, y], color="0.4", lw=0.8)
        ax.plot([r], [0], "o", color="k", ms=3)
        ax.text(hi + 0.25 if i >= k / 2 else lo - 0.25, y, f"{v} ({r:.2f})",
                ha="left" if i >= k / 2 else "right", va="center", fontsize=8)
        ax.plot([r, hi + 0.2 if i >= k / 2 else lo - 0.2], [y, y], color="0.4", lw=0.8)
    # cliques: maximal runs of consecutive variants within CD of each other
    cliques, n_bar = [], 0
    for i in range(k):
        j = max(jj for jj in range(i, k) if mean_rank[names[jj]] - mean_rank[names[i]] < cd)
        if j > i and not any(a <= i and j <= b for a, b in cliques):
            cliques.append((i, j))
    for a, b in cliques:
        y = -0.35 - 0.18 * n_bar
        ax.plot([mean_rank[names[a]] - 0.03, mean_rank[names[b]] + 0.03], [y, y], color="k", lw=3)
        n_bar += 1
    ax.axis("off")
    ax.set_title(title or "mean rank (1 = best); joined = not significantly different (Nemenyi)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
