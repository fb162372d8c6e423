"""``report.md`` for a run directory: results table, per-layer redundancy, failures, plots."""

from __future__ import annotations

import math
import re
from pathlib import Path

from dualattn.report.aggregate import find_runs, group_runs, write_runs_csv
from dualattn.report import plots

REDUNDANCY_DEFINITION = (
    "Head redundancy distance of a layer: R = mean over samples b, head pairs h<h' and valid queries i of "
    "1 - cos(A_b^h[i, valid keys], A_b^h'[i, valid keys]), computed on up to 64 validation samples with the "
    "attention weights over the original keys. R = 0 means all heads attend identically (fully redundant); "
    "larger R = more diverse heads (1 = orthogonal rows)."
)


def _pm(m: float, s: float, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    if math.isnan(m):
        return "n/a"
    return f"{fmt.format(scale * m)} ± {fmt.format(scale * s)}"


def _num(x: float, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _si(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.2f}{unit}"
    return f"{x:.0f}"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def results_table(groups) -> list[str]:
    """Markdown table: one row per (dataset, variant)."""
    lines = [
        "| dataset | variant | seeds ok | test acc (%) | val acc (%) | epochs | time/epoch (s) | peak mem (MB) "
        "| act. mem (MB) | params | FLOPs/sample | head redundancy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for ds, gs in groups.items():
        for g in gs:
            n_ok, n_all = len(g.ok_runs()), len(g.runs)
            acc = g.stat("test_acc")
            val = g.stat("val_acc")
            ep = g.stat("epochs")
            tpe = g.stat("time_per_epoch_s")
            mem = g.stat("peak_mem_mb")
            act = g.stat("act_mem_mb")
            par = g.stat("params")
            fl = g.stat("flops")
            red = g.redundancy_mean()
            lines.append(
                f"| {ds} | {g.variant} | {n_ok}/{n_all} | {_pm(acc[0], acc[1], 100)} | {_pm(val[0], val[1], 100)} "
                f"| {_num(ep[0], '{:.1f}')} | {_pm(tpe[0], tpe[1], 1, '{:.2f}')} | {_num(mem[0], '{:.0f}')} "
                f"| {_num(act[0], '{:.1f}')} | {_si(par[0])} | {_si(fl[0])} | {_pm(red[0], red[1], 1, '{:.3f}')} |"
            )
    return lines


def redundancy_table(groups) -> list[str]:
    depth = max((len(g.redundancy_per_layer()[0]) for gs in groups.values() for g in gs), default=0)
    if depth == 0:
        return ["(no attention statistics recorded)"]
    head = "| dataset | variant | " + " | ".join(f"layer {i}" for i in range(depth)) + " |"
    lines = [head, "|---|---|" + "---|" * depth]
    for ds, gs in groups.items():
        for g in gs:
            m, s = g.redundancy_per_layer()
            cells = [f"{m[i]:.3f} ± {s[i]:.3f}" if i < m.size else "" for i in range(depth)]
            lines.append(f"| {ds} | {g.variant} | " + " | ".join(cells) + " |")
    return lines


def selection_rule(records) -> str:
    """Which validation signal chose the checkpoint and stopped training (``trainer.monitor`` of each run)."""
    import yaml

    counts: dict[str, int] = {}
    for r in records:
        try:
            cfg = yaml.safe_load((r.path / "config.yaml").read_text()) or {}
            mon = str((cfg.get("trainer") or {}).get("monitor", "?"))
        except (OSError, yaml.YAMLError):
            mon = "?"
        counts[mon] = counts.get(mon, 0) + 1
    return ", ".join(f"`{m}` ({n} runs)" for m, n in sorted(counts.items()))


def collect_runs(roots) -> tuple[list, list[str]]:
    """Every run under each root; duplicates of ``(name, dataset, variant, seed)`` keep the first copy.

    Returns ``(records, notes)``; each note describes one duplicate (identical or conflicting test accuracy).
    """
    records, seen, notes = [], {}, []
    for root in roots:
        for r in find_runs(root):
            s = r.summary
            key = (s.get("name"), s.get("dataset"), s.get("variant"), s.get("seed"))
            if None in key[1:] or s.get("seed") is None:
                records.append(r)
                continue
            if key in seen:
                first = seen[key]
                same = first.summary.get("test_acc") == s.get("test_acc") and first.ok == r.ok
                kind = "identical" if same else "CONFLICTING"
                notes.append(f"{kind} duplicate of {key[1]}/{key[2]}/seed{key[3]}: `{r.path}` "
                             f"(test acc {s.get('test_acc')}) ignored, kept `{first.path}` "
                             f"(test acc {first.summary.get('test_acc')})")
                continue
            seen[key] = r
            records.append(r)
    return records, notes


def generate_report(run_root, *, title: str | None = None, extra: list[str] | None = None,
                    out_dir: str | Path | None = None, efficiency_csv: str | Path | None = None,
                    statistics: bool = True) -> Path:
    """Aggregate every ``summary.json`` under ``run_root`` (a folder or a list of folders, merged) into
    ``report.md`` + PNGs in ``out_dir`` (default: the first folder)."""
    from dualattn.report.evidence import statistics_section

    roots = [Path(run_root)] if isinstance(run_root, (str, Path)) else [Path(p) for p in run_root]
    if not roots:
        raise FileNotFoundError("no run directory given")
    root = Path(out_dir) if out_dir is not None else roots[0]
    records, dup_notes = collect_runs(roots)
    if not records:
        raise FileNotFoundError(f"no summary.json found under {', '.join(map(str, roots))}; "
                                "run `dualattn train` or `reproduce` first")
    root.mkdir(parents=True, exist_ok=True)
    groups = group_runs(records)
    ok_groups = {ds: gs for ds, gs in groups.items() if any(g.ok_runs() for g in gs)}
    lines = [f"# {title or 'Results: ' + root.name}", ""]
    if len(roots) > 1:
        lines += ["Merged from: " + ", ".join(f"`{p}`" for p in roots), ""]
    if dup_notes:
        lines += ["**Duplicate runs found while merging** (first copy kept):", ""]
        lines += [f"- {n}" for n in dup_notes] + [""]
    lines += extra or []
    lines += [f"Checkpoint selection and early stopping on: {selection_rule(records)} "
              "(best checkpoint = best value of that signal; test accuracy is that checkpoint's).", ""]
    lines += [
        "Mean ± sample std over seeds (test accuracy of the best-validation checkpoint). "
        "time/epoch = wall time of one training epoch incl. validation; peak mem = process RSS high-water "
        "growth during training (CPU, approximate) or CUDA max allocated (GPU); act. mem = bytes autograd "
        "saves for backward on one training batch; FLOPs = matrix-product FLOPs of one forward pass on one "
        "sample (torch FlopCounterMode).",
        "",
    ]
    lines += results_table(groups) + [""]
    lines += ["## Head redundancy per layer", "", REDUNDANCY_DEFINITION, ""] + redundancy_table(groups) + [""]
    if statistics and ok_groups:
        import json

        from dualattn.report.evidence import verdict_rows

        stat_lines, verdicts = statistics_section(ok_groups, root, efficiency_csv=efficiency_csv)
        lines += stat_lines
        (root / "verdicts.json").write_text(json.dumps(verdict_rows(verdicts), indent=2))
    failed = [r for r in records if not r.ok]
    if failed:
        lines += ["## Failed or unfinished runs", ""]
        for r in failed:
            rel = r.path.relative_to(root) if r.path.is_relative_to(root) else r.path
            lines.append(f"- `{rel}`: {r.summary.get('status')} — {r.summary.get('error', '')}")
        lines.append("")
    if ok_groups:
        lines += ["## Plots", ""]
        for fname, fn, cap in (
            ("learning_curves.png", plots.learning_curves, "Validation accuracy per epoch (mean over seeds)"),
            ("accuracy_vs_variant.png", plots.accuracy_vs_variant, "Test accuracy per variant"),
            ("redundancy_per_layer.png", plots.redundancy_per_layer, "Head redundancy per layer"),
        ):
            fn(ok_groups, root / fname)
            lines += [f"![{cap}]({fname})", ""]
        for ds, gs in ok_groups.items():
            p = plots.attention_maps(ds, gs, root / f"attention_{_slug(ds)}.png")
            if p is not None:
                lines += [f"![Attention maps, {ds}]({p.name})", ""]
    write_runs_csv(records, root / "runs.csv")
    lines += ["Per-run values: [runs.csv](runs.csv).", ""]
    out = root / "report.md"
    out.write_text("\n".join(lines))
    return out
