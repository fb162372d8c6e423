"""``dualattn transfer`` configuration (YAML, validated with pydantic).

A task reduces the backbone tokens to ``tokens`` (s) and then to one or more
token widths: ``pca_dim: d`` (one width) or ``widths: [32, 64, 128, full]``
(a sweep; ``full`` or the backbone's own width C means no PCA, only centring
and scaling). Every ``input: reduced`` head is fitted at every width of its
task (or at the subset in the head's own ``widths``); ``input: full`` heads
run once at the full width (a reference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dualattn.transfer.heads import BASELINES

Width = Union[int, Literal["full"]]


class TaskConfig(BaseModel):
    """One task on one backbone."""

    model_config = ConfigDict(extra="forbid")
    name: str
    backbone: str
    image_size: int = 112
    max_length: int = 32
    n: int | None = None
    n_train: int | None = None
    tokens: int = Field(5, ge=1, description="s: CLS + pooled tokens (vision: 1 + g^2)")
    pca_dim: int | None = Field(None, ge=1, description="d: one PCA width (default 16 unless widths is given)")
    widths: list[Width] | None = Field(None, description="width sweep; 'full' or C = the backbone width, no PCA")
    batch_size: int = Field(64, ge=1)
    task_seed: int = 0

    @model_validator(mode="after")
    def _one_width_spec(self):
        if self.pca_dim is not None and self.widths is not None:
            raise ValueError(f"task {self.name!r}: give pca_dim (one width) or widths (a sweep), not both")
        if self.widths is not None:
            if not self.widths:
                raise ValueError(f"task {self.name!r}: widths must not be empty")
            if any(isinstance(w, int) and w < 1 for w in self.widths):
                raise ValueError(f"task {self.name!r}: widths must be >= 1 or 'full', got {self.widths}")
            if len(set(self.widths)) != len(self.widths):
                raise ValueError(f"task {self.name!r}: widths must be unique, got {self.widths}")
        return self

    @property
    def width_spec(self) -> list[Width]:
        """The configured widths (``[pca_dim]`` for a single width)."""
        return list(self.widths) if self.widths is not None else [self.pca_dim or 16]

    def resolve_widths(self, full_width: int) -> list[int]:
        """Integer widths given the backbone width C (``full`` -> C); errors name the bad width."""
        out = []
        for w in self.width_spec:
            w = full_width if w == "full" else int(w)
            if w > full_width:
                raise ValueError(f"task {self.name!r}: width {w} exceeds the backbone width {full_width} "
                                 f"(widths: {self.width_spec})")
            out.append(w)
        return list(dict.fromkeys(out))


class HeadConfig(BaseModel):
    """A head: ``kind`` baseline (linear-probe|mlp|softmax-attention), convex, or nonconvex."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["baseline", "convex", "nonconvex"]
    head: str | None = None  # convex registry name for kind convex/nonconvex
    head_options: dict[str, Any] = {}
    beta: float | None = None
    options: dict[str, Any] = {}  # fit options (solver/tol/max_iter, or epochs/lr/m ...)
    interpret: bool = False  # token-cluster maps over the patch grid (convex self-attention)
    beta_grid: list[float] | None = None  # choose beta on a validation split of the first seed
    beta_from: str | None = None  # reuse the beta chosen for another head (same program -> comparable objectives)
    input: Literal["reduced", "full"] = "reduced"  # "full": s tokens of the raw width C, no PCA (reference)
    widths: list[Width] | None = None  # subset of the task widths this head runs at (default: all)

    @field_validator("beta_grid")
    @classmethod
    def _grid(cls, v):
        if v is not None and (len(v) < 2 or any(b <= 0 for b in v)):
            raise ValueError(f"beta_grid: give at least two positive values (or a fixed beta:), got {v}")
        return None if v is None else sorted(float(b) for b in v)


class TransferConfig(BaseModel):
    """Top-level ``dualattn transfer`` config (YAML)."""

    model_config = ConfigDict(extra="forbid")
    name: str = "transfer"
    out_dir: str = "runs/transfer"
    feature_cache: str | None = None  # default: <cache root>/features ($DUALATTN_CACHE or ~/.cache/dualattn)
    seeds: list[int] = [0, 1, 2]
    val_fraction: float = Field(0.2, gt=0, lt=1, description="inner validation share for beta_grid")
    beta_grid_extend: int = Field(2, ge=0, description="max one-decade grid extensions per side when the "
                                                       "selected beta is at an end of its grid")
    loss: Literal["cross_entropy", "squared"] = "cross_entropy"
    beta: float = 1.0
    solver: str = Field("auto", description="convex solver (dualattn.convex.fit solver=); a head's "
                                            "options.solver overrides it")
    certify_tol: float = Field(1e-3, gt=0, description="a convex solve counts as certified when its "
                                                       "relative duality gap is <= this (also its default tol)")
    tasks: list[TaskConfig]
    heads: list[HeadConfig]
    progress: bool = True
    extract_threads: int = Field(2, ge=1, description="torch threads for backbone feature extraction")
    head_threads: int = Field(1, ge=1, description="torch threads for fitting the (small) heads")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if not v:
            raise ValueError("seeds: give at least one seed")
        return v

    @field_validator("heads")
    @classmethod
    def _heads(cls, v):
        names = [h.name for h in v]
        if len(set(names)) != len(names):
            raise ValueError(f"heads: names must be unique, got {names}")
        by_name = {h.name: h for h in v}
        for h in v:
            if h.kind == "baseline" and h.name not in BASELINES and h.head not in BASELINES:
                raise ValueError(f"heads: baseline {h.name!r} must be one of {BASELINES} (or set head:)")
            if h.kind in ("convex", "nonconvex") and not h.head:
                raise ValueError(f"heads: {h.name!r} of kind {h.kind} needs head: <convex head name>")
            if h.beta_from is not None:
                if h.beta_from not in names[: names.index(h.name)]:
                    raise ValueError(f"heads: {h.name!r} beta_from {h.beta_from!r} must name an earlier head")
                src = by_name[h.beta_from]
                if src.input != h.input or (src.widths is not None and set(h.widths or []) - set(src.widths)) \
                        or (src.widths is not None and h.widths is None):
                    raise ValueError(f"heads: {h.name!r} beta_from {h.beta_from!r}: the source head must run "
                                     "at every width (and input) of this head")
            if h.input == "full" and h.widths is not None:
                raise ValueError(f"heads: {h.name!r} has input: full (one width, no PCA); drop its widths")
        return v

    @model_validator(mode="after")
    def _head_widths_in_tasks(self):
        for h in self.heads:
            for w in h.widths or []:
                for t in self.tasks:
                    if w not in t.width_spec:
                        raise ValueError(f"heads: {h.name!r} width {w!r} is not among task {t.name!r}'s "
                                         f"widths {t.width_spec}")
        return self

    def with_max_time(self, seconds: float, heads: list[str] | None = None) -> "TransferConfig":
        """A copy in which every convex solve of the convex heads (those named in ``heads``;
        default all) stops after ``seconds`` (``fit(max_time=...)``), e.g. to re-run uncertified
        solves with a longer cap without editing the YAML; the cap is recorded in each result's ``extra``."""
        if not seconds > 0:
            raise ValueError(f"max_time: expected a positive number of seconds, got {seconds!r}")
        new = self.model_copy(deep=True)
        for h in new.heads:
            if h.kind == "convex" and (heads is None or h.name in heads):
                h.options = {**h.options, "max_time": float(seconds)}
        return new


def load_config(path: str | Path) -> TransferConfig:
    """Read and validate a YAML config."""
    from dualattn.train.config import load_yaml_model

    return load_yaml_model(path, TransferConfig)
