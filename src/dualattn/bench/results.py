"""Benchmark result rows: CSV I/O, ratios to SDPA, target checks, tables and plots."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

COLUMNS: tuple[str, ...] = (
    "method", "label", "impl", "n", "batch", "heads", "head_dim", "device", "dtype", "sdpa_backend", "threads",
    "status", "reason", "time_ms", "time_iqr_ms", "time_q1_ms", "time_q3_ms", "time_min_ms",
    "repeats", "first_call_ms", "peak_mem_mb", "process_peak_mem_mb", "est_mem_mb",
    "time_ratio_sdpa", "time_ratio_sdpa_paired", "mem_ratio_sdpa", "mem_method", "torch_version", "timestamp",
)
INT_COLUMNS = {"n", "batch", "heads", "head_dim", "threads", "repeats"}
FLOAT_COLUMNS = {
    "time_ms", "time_iqr_ms", "time_q1_ms", "time_q3_ms", "time_min_ms", "first_call_ms",
    "peak_mem_mb", "process_peak_mem_mb", "est_mem_mb", "time_ratio_sdpa", "time_ratio_sdpa_paired", "mem_ratio_sdpa",
}
BASELINE = "sdpa"

# Targets from the issue.
SOFTMAX_MAX_TIME_RATIO = 1.05
BN_MAX_TIME_RATIO = 1.10
SH_MIN_SPEEDUP = 1.8
SH_SPEEDUP_N = 4096
SH_REF_MAX_MEM_RATIO = 0.55
BN_SH_BIG_N = 16384
BN_SH_MAX_MEM_GB = 24.0


def _group_key(row: dict[str, Any]) -> tuple:
    return (row["n"], row["batch"], row["heads"], row["head_dim"], row["device"], row["dtype"],
            row.get("sdpa_backend") or "auto")


def _ok(row: dict[str, Any] | None) -> bool:
    return row is not None and row.get("status") == "ok" and row.get("time_ms") is not None


def add_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``time_ratio_sdpa = time_ms / time_ms[sdpa]`` and ``mem_ratio_sdpa`` likewise.

    The SDPA row is the one with the same N, batch, heads, head_dim, device,
    dtype and sdpa_backend; ratios are None when either side did not run.
    """
    base = {_group_key(r): r for r in rows if r["method"] == BASELINE and _ok(r)}
    out = []
    for r in rows:
        r = dict(r)
        b = base.get(_group_key(r))
        r["time_ratio_sdpa"] = r["mem_ratio_sdpa"] = None
        if b is not None and _ok(r):
            if b["time_ms"] and b["time_ms"] > 0:
                r["time_ratio_sdpa"] = r["time_ms"] / b["time_ms"]
            if r.get("peak_mem_mb") is not None and b.get("peak_mem_mb"):
                r["mem_ratio_sdpa"] = r["peak_mem_mb"] / b["peak_mem_mb"]
        out.append(r)
    return out


def write_csv(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write rows with the fixed ``COLUMNS`` (missing values empty); atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    tmp.replace(path)
    return path


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read rows written by ``write_csv``, restoring ints, floats and None."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            r: dict[str, Any] = {}
            for k in COLUMNS:
                v = raw.get(k, "")
                if v == "" or v is None:
                    r[k] = None if k not in ("reason",) else ""
                elif k in INT_COLUMNS:
                    r[k] = int(float(v))
                elif k in FLOAT_COLUMNS:
                    r[k] = float(v)
                else:
                    r[k] = v
            rows.append(r)
    return rows


@dataclass(frozen=True)
class TargetResult:
    """Outcome of one target: ``status`` is PASS, FAIL or N/A (not measured)."""

    name: str
    status: str
    detail: str


def _index(rows: Sequence[dict[str, Any]], device: str) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["method"], r["n"]): r for r in rows if r["device"] == device}


def time_ratio(row: dict[str, Any]) -> float | None:
    """Time relative to SDPA: the paired (same-round) ratio when measured, else the ratio of medians."""
    paired = row.get("time_ratio_sdpa_paired")
    return paired if paired is not None else row.get("time_ratio_sdpa")


def _ratio_target(idx, method: str, other: str, key: str, limit: float, name: str) -> TargetResult:
    """PASS iff ``row[key] / other_row[key] <= limit`` at every N where both ran.

    For ``key="time_ms"`` against SDPA the paired ratio is used (``time_ratio``).
    """
    pairs = []
    for (m, n), r in sorted(idx.items(), key=lambda kv: kv[0][1]):
        o = idx.get((other, n))
        if m == method and _ok(r) and _ok(o) and r.get(key) is not None and o.get(key):
            ratio = time_ratio(r) if (key == "time_ms" and other == BASELINE) else None
            pairs.append((n, ratio if ratio is not None else r[key] / o[key]))
    if not pairs:
        return TargetResult(name, "N/A", f"no N where both {method} and {other} ran")
    worst_n, worst = max(pairs, key=lambda p: p[1])
    listing = ", ".join(f"{n}: {x:.2f}x" for n, x in pairs)
    status = "PASS" if worst <= limit else "FAIL"
    return TargetResult(name, status, f"worst {worst:.2f}x at N={worst_n} (limit {limit:.2f}x); {listing}")


def evaluate_targets(rows: Sequence[dict[str, Any]], device: str | None = None) -> list[TargetResult]:
    """Check the issue's targets on ``rows`` of one device (the first device seen if None)."""
    if not rows:
        return []
    device = device or rows[0]["device"]
    idx = _index(rows, device)
    out = [
        _ratio_target(idx, "softmax", "sdpa", "time_ms", SOFTMAX_MAX_TIME_RATIO,
                      f"softmax time <= {SOFTMAX_MAX_TIME_RATIO}x SDPA (every N)"),
        _ratio_target(idx, "bn", "sdpa", "time_ms", BN_MAX_TIME_RATIO,
                      f"BN time <= {BN_MAX_TIME_RATIO}x SDPA (every N)"),
    ]
    name = f"SH >= {SH_MIN_SPEEDUP}x faster than SDPA at N={SH_SPEEDUP_N}"
    sh, sd = idx.get(("sh", SH_SPEEDUP_N)), idx.get(("sdpa", SH_SPEEDUP_N))
    if _ok(sh) and _ok(sd):
        speedup = 1.0 / (time_ratio(sh) or sh["time_ms"] / sd["time_ms"])
        status = "PASS" if speedup >= SH_MIN_SPEEDUP else "FAIL"
        out.append(TargetResult(name, status, f"speedup {speedup:.2f}x ({sd['time_ms']:.0f} ms / {sh['time_ms']:.0f} ms)"))
    else:
        out.append(TargetResult(name, "N/A", f"sh or sdpa not measured at N={SH_SPEEDUP_N}"))
    out.append(_ratio_target(idx, "sh-ref", "softmax-ref", "peak_mem_mb", SH_REF_MAX_MEM_RATIO,
                             f"SH peak mem <= {SH_REF_MAX_MEM_RATIO}x softmax, reference path (every N)"))
    out.append(_ratio_target(idx, "sh", "sdpa", "peak_mem_mb", 1.0,
                             "SH peak mem <= SDPA, fast path (every N)"))
    name = f"BN+SH fwd+bwd at N={BN_SH_BIG_N} within {BN_SH_MAX_MEM_GB:g} GiB"
    r = idx.get(("bn+sh", BN_SH_BIG_N))
    if r is None or r.get("status") in ("unavailable", "skipped", None):
        why = "" if r is None else f" ({r.get('status')}: {r.get('reason', '')})"
        out.append(TargetResult(name, "N/A", f"bn+sh not measured at N={BN_SH_BIG_N}{why}"))
    elif _ok(r):
        gib = (r.get("process_peak_mem_mb") or r["peak_mem_mb"]) / 1024
        status = "PASS" if gib <= BN_SH_MAX_MEM_GB else "FAIL"
        out.append(TargetResult(name, status, f"process peak {gib:.2f} GiB, call peak {r['peak_mem_mb'] / 1024:.2f} GiB"))
    else:
        out.append(TargetResult(name, "FAIL", f"status {r['status']}: {r.get('reason', '')}"))
    return out


def _fmt(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _cell(r: dict[str, Any]) -> tuple[str, str, str, str, str]:
    if not _ok(r):
        return (r["status"], "-", "-", "-", "-")
    t = f"{r['time_ms']:.1f} ± {r['time_iqr_ms'] / 2:.1f}" if r.get("time_iqr_ms") else f"{r['time_ms']:.1f}"
    return ("ok", t, _fmt(time_ratio(r), ".2f"), _fmt(r.get("peak_mem_mb"), ".1f"),
            _fmt(r.get("mem_ratio_sdpa"), ".2f"))


TABLE_HEADER = ("method", "N", "status", "time fwd+bwd (ms)", "time / SDPA", "peak mem (MB)", "mem / SDPA")


def table_rows(rows: Sequence[dict[str, Any]]) -> list[tuple[str, ...]]:
    """Rows for display, sorted by N then method order of appearance; skipped cells show their status."""
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    out = []
    for r in sorted(rows, key=lambda r: (r["device"], r["n"], order[r["method"]])):
        status, t, tr, m, mr = _cell(r)
        out.append((r.get("label") or r["method"], str(r["n"]), status, t, tr, m, mr))
    return out


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of ``table_rows`` (time shown as median ± IQR/2); skip reasons as footnotes."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "|".join(["---"] * len(TABLE_HEADER)) + "|"]
    lines += ["| " + " | ".join(t) + " |" for t in table_rows(rows)]
    reasons = sorted({(r["method"], r["n"], r["status"], r.get("reason") or "") for r in rows if not _ok(r)},
                     key=lambda x: (x[0], x[1]))
    if reasons:
        lines.append("")
        lines += [f"* {m} N={n}: {s} — {why}" for m, n, s, why in reasons]
    return "\n".join(lines)


def rich_table(rows: Sequence[dict[str, Any]], title: str = "attention fwd+bwd"):
    """A ``rich.table.Table`` of ``table_rows``."""
    from rich.table import Table

    table = Table(title=title)
    for h in TABLE_HEADER:
        table.add_column(h, justify="left" if h in ("method", "status") else "right")
    for t in table_rows(rows):
        style = None if t[2] == "ok" else "dim"
        table.add_row(*t, style=style)
    return table


def plot(rows: Sequence[dict[str, Any]], out_dir: str | Path, stem: str = "attention_speed") -> list[Path]:
    """Write ``<stem>_time.png`` and ``<stem>_memory.png``: log-log vs N, one line per method."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    methods = list(dict.fromkeys(r["method"] for r in rows))
    devices = sorted({r["device"] for r in rows})
    for key, ylabel, suffix in (("time_ms", "forward+backward time (ms)", "time"),
                                ("peak_mem_mb", "peak memory (MB)", "memory")):
        fig, ax = plt.subplots(figsize=(7, 5))
        for dev in devices:
            for m in methods:
                pts = sorted((r["n"], r[key]) for r in rows
                             if r["method"] == m and r["device"] == dev and _ok(r) and r.get(key))
                if not pts:
                    continue
                label = next(r.get("label") or m for r in rows if r["method"] == m)
                if len(devices) > 1:
                    label += f" [{dev}]"
                ls = "--" if m in ("mha", "sdpa") else "-"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, marker="o", ms=4, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(ylabel)
        ax.set_title(f"attention {suffix} vs N ({', '.join(devices)})")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        path = out_dir / f"{stem}_{suffix}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
