"""Collect ``summary.json`` files under a run directory and aggregate over seeds."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VARIANT_ORDER = ("softmax", "linear", "sparse", "bn", "sh", "bn+sh", "linear-bn", "primal")


def variant_key(v: str) -> tuple[int, str]:
    return (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else len(VARIANT_ORDER), v)


@dataclass
class RunRecord:
    """One run: its directory and parsed ``summary.json``."""

    path: Path
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.summary.get("status", "ok") == "ok"


def find_runs(root: str | Path) -> list[RunRecord]:
    """Every ``summary.json`` below ``root`` (sorted by path). Raises if ``root`` is missing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory not found: {root}")
    out = []
    for p in sorted(root.rglob("summary.json")):
        try:
            s = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            s = {"status": "unreadable", "error": str(exc)}
        for k in ("dataset", "variant"):
            s.setdefault(k, "?")
        out.append(RunRecord(p.parent, s))
    return out


def _mean_std(vals: list[float]) -> tuple[float, float, int]:
    v = np.array([x for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


@dataclass
class Group:
    """Aggregate of the successful seeds of one (dataset, variant)."""

    dataset: str
    variant: str
    runs: list[RunRecord] = field(default_factory=list)

    def ok_runs(self) -> list[RunRecord]:
        return [r for r in self.runs if r.ok]

    def stat(self, key: str) -> tuple[float, float, int]:
        return _mean_std([r.summary.get(key) for r in self.ok_runs()])

    def redundancy_mean(self) -> tuple[float, float, int]:
        """Mean over layers per run, then mean/std over seeds."""
        vals = []
        for r in self.ok_runs():
            red = [x for x in r.summary.get("head_redundancy") or [] if x is not None and not math.isnan(x)]
            if red:
                vals.append(float(np.mean(red)))
        return _mean_std(vals)

    def redundancy_per_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) over seeds for each layer; empty when no run has it."""
        rows = [r.summary.get("head_redundancy") for r in self.ok_runs() if r.summary.get("head_redundancy")]
        if not rows:
            return np.zeros(0), np.zeros(0)
        L = min(len(x) for x in rows)
        a = np.array([[np.nan if v is None else v for v in x[:L]] for x in rows], dtype=float)
        return np.nanmean(a, 0), (np.nanstd(a, 0, ddof=1) if len(a) > 1 else np.zeros(L))


def group_runs(records: list[RunRecord]) -> dict[str, list[Group]]:
    """``{dataset: [Group per variant in canonical order]}``."""
    groups: dict[tuple[str, str], Group] = {}
    for r in records:
        key = (str(r.summary["dataset"]), str(r.summary["variant"]))
        groups.setdefault(key, Group(*key)).runs.append(r)
    out: dict[str, list[Group]] = {}
    for (ds, _), g in sorted(groups.items(), key=lambda kv: (kv[0][0], variant_key(kv[0][1]))):
        out.setdefault(ds, []).append(g)
    return out


RUN_COLUMNS = ("dataset", "variant", "seed", "status", "test_acc", "val_acc", "epochs", "best_epoch",
               "time_per_epoch_s", "peak_mem_mb", "act_mem_mb", "params", "flops", "head_redundancy", "error")


def write_runs_csv(records: list[RunRecord], path: str | Path) -> Path:
    """One row per run (redundancy per layer joined with ';'), for spreadsheets and diffs."""
    import csv

    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(RUN_COLUMNS)
        for r in records:
            row = []
            for k in RUN_COLUMNS:
                v = r.summary.get(k, "")
                if isinstance(v, list):
                    v = ";".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in v)
                elif isinstance(v, float):
                    v = f"{v:.6g}"
                row.append(v)
            w.writerow(row)
    return path
