"""Typed, versioned records of a transfer run, stored as JSON Lines.

* :class:`TransferResult`: one fitted head on one (task, seed, width):
  ``out_dir/results.jsonl``.
* :class:`BetaSelection`: how beta was chosen for one (task, head, width) on the
  validation split, including any automatic extension of the grid:
  ``out_dir/beta_selection.jsonl``.
* :class:`BetaSolve`: one fit of that search (beta, validation accuracy, certificate),
  written as soon as it finishes: ``out_dir/beta_search.jsonl``; an interrupted search
  resumes from them instead of refitting.
* :class:`TaskInfo`: what a task's features were (backbone, sizes, widths):
  ``out_dir/tasks.json`` (one JSON object keyed by task name).

Every line carries ``schema_version``; :func:`read_jsonl` validates each line
and raises :class:`RecordError` naming the file and line of a bad record.
``results.jsonl`` lines written before the schema existed (untyped dicts with
``d``/``s`` and the certificate under ``extra``) are upgraded on read, so old
run directories still resume and report.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCHEMA_VERSION = 1
Kind = Literal["baseline", "convex", "nonconvex"]


class RecordError(ValueError):
    """A line of a records file is not valid JSON or not a valid record."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)
    schema_version: int = SCHEMA_VERSION

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(f"schema_version {v} is newer than this dualattn understands ({SCHEMA_VERSION}); "
                             "upgrade dualattn")
        return v


class TransferResult(_Record):
    """One head fitted on one (task, seed, token width).

    ``objective`` = sum_i loss_i + beta * penalty (the convex program's scale);
    for convex heads ``gap``/``rel_gap`` are the certified duality gap at the
    returned point, ``status`` the solver's stop reason and ``certified`` whether
    ``rel_gap <= certify_tol`` of the run.
    """

    task: str
    backbone: str
    seed: int
    head: str
    kind: Kind
    convex_head: str | None = None
    width: int = Field(ge=1, description="token width d the head saw")
    full_width: bool | None = Field(None, description="True: the backbone's width, no PCA")
    tokens: int = Field(ge=1, description="s: tokens per example")
    n_train: int = Field(ge=1)
    n_test: int = Field(ge=0)
    pca_explained: float | None = None
    loss: str
    beta: float = Field(ge=0)
    beta_selected: bool = False
    val_acc: float | None = Field(None, description="validation accuracy of the chosen beta (beta_grid heads)")
    train_acc: float = Field(ge=0, le=1)
    test_acc: float = Field(ge=0, le=1)
    objective: float
    time_s: float = Field(ge=0)
    params: int = Field(ge=0)
    gap: float | None = None
    rel_gap: float | None = None
    status: str | None = None
    iterations: int | None = None
    solver: str | None = None
    certified: bool | None = None
    extra: dict[str, Any] = {}

    @property
    def key(self) -> tuple[str, int, str, int]:
        """``(task, seed, head, width)``: what a resumed run skips."""
        return (self.task, self.seed, self.head, self.width)


class SolveInfo(BaseModel):
    """Certificate of one convex solve made during the beta search."""

    model_config = ConfigDict(extra="forbid")
    status: str | None = None
    rel_gap: float | None = None
    iterations: int | None = None
    certified: bool | None = None


class BetaSelection(_Record):
    """beta chosen for one (task, head, width): best validation accuracy, ties to the larger beta.

    ``initial_grid`` is the configured grid; when the best value sat at an end of
    the grid, the grid was extended by one decade on that side (``extended``, in
    the order tried) up to the run's limit. ``at_edge`` is ``"lower"``/``"upper"``
    when the selected beta is still at an end of the final grid (limit reached).
    """

    task: str
    head: str
    width: int
    seed: int
    val_fraction: float
    initial_grid: list[float]
    grid: list[float]
    val_acc: dict[str, float]
    beta: float
    extended: list[float] = []
    at_edge: Literal["lower", "upper"] | None = None
    solves: dict[str, SolveInfo] = {}

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.task, self.head, self.width)


class BetaSolve(_Record):
    """One fit of a beta search: validation accuracy of ``beta`` for (task, head, width) on the
    inner split of ``seed`` (``val_fraction``), and, for convex heads, its certificate."""

    task: str
    head: str
    width: int
    seed: int
    val_fraction: float
    beta: float
    val_acc: float = Field(ge=0, le=1)
    solve: SolveInfo | None = None

    @property
    def key(self) -> tuple[str, str, int, int, float]:
        return (self.task, self.head, self.width, self.seed, self.val_fraction)


class TaskInfo(_Record):
    """A task's features in a run: ``tokens_raw x dim_raw`` backbone tokens reduced to
    ``tokens`` tokens at each of ``widths`` (``dim_raw`` = the full width, no PCA)."""

    task: str
    backbone: str
    n: int
    tokens_raw: int
    dim_raw: int
    tokens: int
    widths: list[int]
    grid: list[int] | None = None
    cache: str
    load_and_extract_s: float
    description: str = ""
    classes: list[str] = []
    backbone_info: dict[str, Any] = {}


def write_tasks(out_dir: str | Path, tasks: dict[str, TaskInfo]) -> Path:
    """Write ``tasks.json`` (task name -> :class:`TaskInfo`)."""
    path = Path(out_dir) / "tasks.json"
    path.write_text(json.dumps({k: v.model_dump(mode="json") for k, v in tasks.items()}, indent=2, default=str))
    return path


def read_tasks(out_dir: str | Path) -> dict[str, TaskInfo]:
    """``tasks.json`` of a run directory, validated (``{}`` when missing); pre-schema files are upgraded."""
    path = Path(out_dir) / "tasks.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: expected an object keyed by task name, got {type(raw).__name__}")
    out = {}
    for name, info in raw.items():
        if isinstance(info, dict) and "schema_version" not in info:  # before the schema: one PCA width
            info = {**{k: v for k, v in info.items() if k != "pca_dim"}, "schema_version": SCHEMA_VERSION,
                    "widths": info.get("widths") or [info.get("pca_dim")]}
        try:
            out[name] = TaskInfo.model_validate(info)
        except ValidationError as e:
            errors = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'record'}: {err['msg']}" for err in e.errors())
            raise RecordError(f"{path}: task {name!r}: bad TaskInfo record: {errors}") from None
    return out


R = TypeVar("R", bound=_Record)


def upgrade_v0_result(raw: dict[str, Any]) -> dict[str, Any]:
    """Map an untyped pre-schema ``results.jsonl`` line onto :class:`TransferResult` fields."""
    raw = dict(raw)
    extra = dict(raw.pop("extra", None) or {})
    rel = extra.pop("rel_gap", None)
    out = {
        "schema_version": SCHEMA_VERSION, "task": raw.pop("task", None), "backbone": raw.pop("backbone", None),
        "seed": raw.pop("seed", None), "head": raw.pop("head", None), "kind": raw.pop("kind", None),
        "width": raw.pop("d", None), "tokens": raw.pop("s", None), "n_train": raw.pop("n_train", None),
        "n_test": raw.pop("n_test", None), "pca_explained": raw.pop("pca_explained", None),
        "train_acc": raw.pop("train_acc", None), "test_acc": raw.pop("test_acc", None),
        "objective": raw.pop("objective", None), "time_s": raw.pop("time_s", None),
        "params": raw.pop("params", 0), "gap": raw.pop("gap", None), "rel_gap": rel,
        "convex_head": extra.pop("convex_head", None), "loss": extra.pop("loss", "cross_entropy"),
        "beta": extra.pop("beta", None), "beta_selected": bool(extra.pop("beta_selected", False)),
        "status": extra.pop("status", None), "iterations": extra.pop("iterations", None),
        "solver": extra.pop("solver", None),
    }
    if out["kind"] == "convex" and rel is not None:
        out["certified"] = rel <= 1e-3  # the pre-schema runs' target
    out["extra"] = {**extra, **raw, "upgraded_from_schema": 0}
    return out


def read_jsonl(path: str | Path, model: type[R], *, upgrade=None) -> list[R]:
    """Every record of ``path`` validated as ``model`` (empty list when the file is missing).

    Lines without ``schema_version`` go through ``upgrade`` first (or are rejected).
    Raises :class:`RecordError` ``"<file>:<line>: ..."`` on the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    out: list[R] = []
    with path.open() as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{i}: not valid JSON ({e.msg}); a truncated last line from an "
                                  "interrupted run can be deleted") from None
            if not isinstance(raw, dict):
                raise RecordError(f"{path}:{i}: expected a JSON object, got {type(raw).__name__}")
            if "schema_version" not in raw:
                if upgrade is None:
                    raise RecordError(f"{path}:{i}: no schema_version; not a {model.__name__} record")
                raw = upgrade(raw)
            try:
                out.append(model.model_validate(raw))
            except ValidationError as e:
                errors = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'record'}: {err['msg']}"
                                   for err in e.errors())
                raise RecordError(f"{path}:{i}: bad {model.__name__} record: {errors}") from None
    return out


def append_jsonl(path: str | Path, record: _Record) -> None:
    """Append one record as a line and flush it to disk (a crash loses at most this line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = record.model_dump_json() + "\n"
    with path.open("a") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def read_results(out_dir: str | Path) -> list[TransferResult]:
    """All :class:`TransferResult` records of a run directory (``results.jsonl``)."""
    return read_jsonl(Path(out_dir) / "results.jsonl", TransferResult, upgrade=upgrade_v0_result)


def read_beta_selections(out_dir: str | Path) -> list[BetaSelection]:
    """All :class:`BetaSelection` records of a run directory (``beta_selection.jsonl``)."""
    return read_jsonl(Path(out_dir) / "beta_selection.jsonl", BetaSelection)


def read_beta_solves(out_dir: str | Path) -> list[BetaSolve]:
    """All :class:`BetaSolve` records of a run directory (``beta_search.jsonl``; none if absent)."""
    return read_jsonl(Path(out_dir) / "beta_search.jsonl", BetaSolve)


def finite_or_none(x) -> float | None:
    """``float(x)``, or None for None / NaN / inf (JSON has no NaN)."""
    if x is None:
        return None
    x = float(x.item() if hasattr(x, "item") else x)
    return x if math.isfinite(x) else None
