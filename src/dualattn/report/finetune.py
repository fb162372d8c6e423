"""Report of a fine-tuning study (``dualattn finetune run``): table, findings and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

STAGES = (("probe_acc", "frozen + probe"), ("swap_acc", "softmax-FT, swapped"), ("finetune_acc", "fine-tuned"))


def load_results(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `dualattn finetune run CONFIG` first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ms(values) -> tuple[float, float, int]:
    v = np.array([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, variant): mean and sample std over seeds of every metric."""
    rows = []
    keys = list(dict.fromkeys((r["task"], r["variant"]) for r in records))
    for task, variant in keys:
        rs = [r for r in records if r["task"] == task and r["variant"] == variant]
        row: dict[str, Any] = {"task": task, "variant": variant, "seeds": len(rs)}
        for k in ("probe_acc", "swap_acc", "finetune_acc", "time_per_step_s", "cpu_time_per_step_s",
                  "peak_mem_mb"):
            row[k], row[k + "_std"], _ = _ms([r.get(k) for r in rs])
        rows.append(row)
    return rows


def _pct(m: float, s: float) -> str:
    return "–" if np.isnan(m) else f"{100 * m:.1f} ± {100 * s:.1f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| task | variant | seeds | frozen + probe (%) | softmax-FT, swapped (%) | fine-tuned (%) "
            "| time/step (s) | CPU time/step (s) | peak mem (MB) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        t = "–" if np.isnan(r["time_per_step_s"]) else f"{r['time_per_step_s']:.3f}"
        c = "–" if np.isnan(r["cpu_time_per_step_s"]) else f"{r['cpu_time_per_step_s']:.3f}"
        m = "–" if np.isnan(r["peak_mem_mb"]) else f"{r['peak_mem_mb']:.0f}"
        lines.append(f"| {r['task']} | {r['variant']} | {r['seeds']} | {_pct(r['probe_acc'], r['probe_acc_std'])} "
                     f"| {_pct(r['swap_acc'], r['swap_acc_std'])} | {_pct(r['finetune_acc'], r['finetune_acc_std'])} "
                     f"| {t} | {c} | {m} |")
    return "\n".join(lines) + "\n"


def findings(rows: list[dict[str, Any]]) -> list[str]:
    """Plain sentences comparing each variant with softmax on the same task (points = accuracy %)."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        ref = next((r for r in rows if r["task"] == task and r["variant"] == "softmax"), None)
        if ref is None:
            continue
        for r in rows:
            if r["task"] != task or r["variant"] == "softmax":
                continue
            parts = []
            for key, label in STAGES:
                if not (np.isnan(r[key]) or np.isnan(ref[key])):
                    parts.append(f"{label} {100 * (r[key] - ref[key]):+.1f}")
            if parts:
                out.append(f"- **{task}, {r['variant']}** vs softmax (accuracy points): " + ", ".join(parts) + ".")
            if not (np.isnan(r["swap_acc"]) or np.isnan(r["finetune_acc"]) or np.isnan(ref["finetune_acc"])):
                lost = ref["finetune_acc"] - r["swap_acc"]
                back = r["finetune_acc"] - r["swap_acc"]
                if lost > 0.01 and back >= 0:
                    out.append(f"  Swapping cost {100 * lost:.1f} points; fine-tuning with {r['variant']} from the "
                               f"pretrained weights recovered {100 * back:.1f} of them ({100 * back / lost:.0f} %).")
                elif lost > 0.01:
                    out.append(f"  Swapping cost {100 * lost:.1f} points; fine-tuning with {r['variant']} from the "
                               f"pretrained weights lost {100 * -back:.1f} more.")
    return out


def plot_accuracy(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rs = [r for r in rows if r["task"] == task]
        x = np.arange(len(rs))
        w = 0.27
        for i, (key, label) in enumerate(STAGES):
            m = [100 * r[key] for r in rs]
            s = [100 * r[key + "_std"] for r in rs]
            ax.bar(x + (i - 1) * w, m, w, yerr=s, label=label, capsize=2)
        ax.set_xticks(x, [r["variant"] for r in rs])
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(task)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path) -> Path:
    """Write ``report.md``, ``summary.csv`` and ``plots/accuracy.png`` for a fine-tuning run directory."""
    out = Path(out_dir)
    records = load_results(out)
    rows = summarize(records)
    with (out / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    plot_accuracy(rows, out / "plots" / "accuracy.png")
    first = {r["task"]: r for r in records}
    lines = ["# Fine-tuning study: dualattn variants inside pretrained transformers", "",
             "Each variant is swapped in through `attn_implementation` (`dualattn.hf`), weights unchanged.", "",
             "- **frozen + probe**: pretrained backbone run with the variant, logistic-regression probe on "
             "[CLS, mean] features of the training rows;",
             "- **softmax-FT, swapped**: the classifier fine-tuned with softmax, evaluated with the variant "
             "(no retraining; the softmax row is that classifier itself);",
             "- **fine-tuned**: the pretrained backbone fine-tuned end to end with the variant (same steps, "
             "learning rates and batches).", ""]
    for task, r in first.items():
        lines.append(f"- `{task}`: {r['n_train']} training / {r['n_test']} test examples, {r['n_classes']} classes, "
                     f"{r['steps']} AdamW steps of batch {r['batch_size']}.")
    lines += ["", "Mean ± sample std over seeds (a seed = a split, a head init and a batch order). Time per step = "
              "median wall-clock (and process CPU time, all threads) of one forward+backward+AdamW step; "
              "peak memory = peak resident-set increase "
              "during fine-tuning (CPU; shared machine, noisy).", "", markdown_table(rows), "## Findings", ""]
    lines += findings(rows) or ["- (no softmax reference in this run)"]
    lines += ["", "## Plot", "", "![accuracy](plots/accuracy.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"
