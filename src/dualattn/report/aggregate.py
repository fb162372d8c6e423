"""Collect ``summary.json`` files under a run directory, validate them and aggregate over seeds.

Every summary is checked against :class:`RunSummary` (typed with pydantic) as it
is read. :func:`validate_runs` returns the valid runs and one
:class:`SummaryError` (file path + reason) per invalid or unreadable file;
:func:`find_runs` keeps the invalid ones as records with ``status: "invalid"``
and the reason as ``error``, so reports list them as failed runs and never
count them as ok.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

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
        return self.summary.get("status") == "ok"


Number = Annotated[float, Field(strict=True)]  # int or float, never a string or bool


def _fraction_or_nan(v: float) -> float:
    if not (math.isnan(v) or 0.0 <= v <= 1.0):
        raise ValueError(f"expected an accuracy in [0, 1] (or NaN), got {v}")
    return v


Accuracy = Annotated[float, Field(strict=True), AfterValidator(_fraction_or_nan)]  # NaN: not evaluated
Count = Annotated[int, Field(strict=True, ge=0)]
OK_REQUIRED = ("test_acc", "val_acc", "epochs")


class RunSummary(BaseModel):
    """The typed content of a run's ``summary.json`` (extra keys are kept, unchecked).

    Every summary names its ``dataset``, ``variant``, integer ``seed`` and
    ``status``; a finished run (``status: ok``) also carries numeric
    ``test_acc``/``val_acc`` in [0, 1] (NaN when not evaluated) and ``epochs``.
    """

    model_config = ConfigDict(extra="allow")

    dataset: Annotated[str, Field(strict=True, min_length=1)]
    variant: Annotated[str, Field(strict=True, min_length=1)]
    seed: Annotated[int, Field(strict=True)]
    status: Annotated[str, Field(strict=True, min_length=1)]
    test_acc: Optional[Accuracy] = None
    val_acc: Optional[Accuracy] = None
    epochs: Optional[Count] = None
    best_epoch: Optional[Annotated[int, Field(strict=True)]] = None
    params: Optional[Count] = None
    flops: Optional[Number] = None
    time_per_epoch_s: Optional[Number] = None
    peak_mem_mb: Optional[Number] = None
    act_mem_mb: Optional[Number] = None
    head_redundancy: Optional[list[Optional[Number]]] = None
    error: Optional[str] = None

    @model_validator(mode="after")
    def _finished_runs_have_results(self) -> "RunSummary":
        if self.status == "ok":
            missing = [k for k in OK_REQUIRED if getattr(self, k) is None]
            if missing:
                raise ValueError(f"status is 'ok' but {', '.join(missing)} missing")
        return self


@dataclass
class SummaryError:
    """A ``summary.json`` that could not be read or failed validation."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e["loc"])
        got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
        parts.append(f"{loc + ': ' if loc else ''}{e['msg']}{got}")
    return "; ".join(parts)


def check_summary(path: str | Path) -> tuple[dict[str, Any] | None, SummaryError | None]:
    """``(summary dict, None)`` for a valid ``summary.json``, else ``(raw dict or None, SummaryError)``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, SummaryError(path, f"unreadable: {exc}")
    if not isinstance(raw, dict):
        return None, SummaryError(path, f"expected a JSON object, got {type(raw).__name__}")
    try:
        RunSummary.model_validate(raw)
    except ValidationError as exc:
        return raw, SummaryError(path, f"invalid summary: {_validation_message(exc)}")
    return raw, None


def _summary_files(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run directory not found: {root}")
    return sorted(root.rglob("summary.json"))


def validate_runs(root: str | Path) -> tuple[list[RunRecord], list[SummaryError]]:
    """``(valid runs, errors)`` for every ``summary.json`` below ``root`` (sorted by path).

    Raises ``FileNotFoundError`` if ``root`` is missing; never raises for a bad file.
    """
    valid, errors = [], []
    for p in _summary_files(root):
        summary, err = check_summary(p)
        if err is None:
            valid.append(RunRecord(p.parent, summary))
        else:
            errors.append(err)
    return valid, errors


def _invalid_record(path: Path, raw: dict[str, Any] | None, err: SummaryError) -> RunRecord:
    raw = raw or {}
    s = {k: (raw.get(k) if isinstance(raw.get(k), str) and raw.get(k) else "?") for k in ("dataset", "variant")}
    if isinstance(raw.get("seed"), int) and not isinstance(raw.get("seed"), bool):
        s["seed"] = raw["seed"]
    s.update(status="invalid", error=f"{err.path}: {err.message}")
    return RunRecord(path.parent, s)


def find_runs(root: str | Path) -> list[RunRecord]:
    """Every ``summary.json`` below ``root`` (sorted by path). Raises if ``root`` is missing.

    Invalid or unreadable summaries come back as records with ``status: "invalid"``
    and ``error`` naming the file and the problem (see :func:`validate_runs`).
    """
    out = []
    for p in _summary_files(root):
        summary, err = check_summary(p)
        out.append(RunRecord(p.parent, summary) if err is None else _invalid_record(p, summary, err))
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
