"""``dualattn reproduce``: run a protocol (variants x datasets x seeds) in-process, then report.

A protocol file (``configs/reproduce-quick.yaml``, ``configs/reproduce-full.yaml``)::

    name: quick
    variants: [softmax, linear, bn, sh, bn+sh]
    experiments:
      - config: uea-quick.yaml          # relative to the protocol file
        datasets: [JapaneseVowels, BasicMotions]
        seeds: 3
        dataset_overrides: {BasicMotions: [data.batch_size=8]}

Runs land in ``OUT/<name>/<dataset>/<variant>/seed<k>/``. Finished runs
(``summary.json`` with ``status: ok``) are skipped, unfinished ones resumed
from their last checkpoint, so an interrupted ``reproduce`` can simply be
restarted. A failing run is recorded and the protocol continues.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dualattn.train.config import VARIANTS, ConfigError, RunConfig, apply_overrides, build_config


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str
    datasets: list[str] = Field(min_length=1)
    seeds: int = Field(default=1, ge=1)
    overrides: list[str] = Field(default_factory=list)
    dataset_overrides: dict[str, list[str]] = Field(default_factory=dict)


class Protocol(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    variants: list[str] = Field(min_length=1)
    experiments: list[Experiment] = Field(min_length=1)

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in VARIANTS]
        if bad:
            raise ValueError(f"unknown variant(s) {bad}; expected names from {VARIANTS}")
        return v


@dataclass
class PlannedRun:
    cfg: RunConfig
    run_dir: Path


@dataclass
class Outcome:
    run_dir: Path
    status: str
    seconds: float
    summary: dict[str, Any] | None = None
    error: str = ""


def configs_dir() -> Path:
    """``./configs`` when present, else the ``configs/`` folder of the source checkout."""
    here = Path.cwd() / "configs"
    if (here / "reproduce-quick.yaml").is_file():
        return here
    return Path(__file__).resolve().parents[3] / "configs"


def load_protocol(path: str | Path) -> Protocol:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"protocol file not found: {path}")
    try:
        return Protocol.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as err:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid protocol {path}: {msgs}") from None


def plan_runs(
    protocol_path: str | Path,
    *,
    out: str | Path = "runs",
    name: str | None = None,
    datasets: list[str] | None = None,
    variants: list[str] | None = None,
    seeds: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> tuple[Protocol, list[PlannedRun]]:
    """Expand a protocol into validated run configs (all validated before anything trains)."""
    protocol_path = Path(protocol_path)
    proto = load_protocol(protocol_path)
    name = name or proto.name
    vs = variants or proto.variants
    bad = [v for v in vs if v not in VARIANTS]
    if bad:
        raise ConfigError(f"--variants: unknown {bad}; expected names from {VARIANTS}")
    known = {d.lower() for e in proto.experiments for d in e.datasets}
    if datasets:
        missing = [d for d in datasets if d.lower() not in known]
        if missing:
            raise ConfigError(f"--datasets: {missing} not in protocol {protocol_path.name} (has {sorted(known)})")
    wanted = {d.lower() for d in datasets} if datasets else None
    runs: list[PlannedRun] = []
    for exp in proto.experiments:
        cpath = (protocol_path.parent / exp.config).resolve()
        if not cpath.is_file():
            raise ConfigError(f"protocol {protocol_path.name}: config {exp.config} not found at {cpath}")
        base = yaml.safe_load(cpath.read_text()) or {}
        for ds in exp.datasets:
            if wanted is not None and ds.lower() not in wanted:
                continue
            for variant in vs:
                for seed in range(seeds if seeds is not None else exp.seeds):
                    ov = [f"name={name}", f"data.name={ds}", f"model.variant={variant}", f"seed={seed}"]
                    ov += exp.overrides + exp.dataset_overrides.get(ds, []) + list(overrides)
                    cfg = build_config(apply_overrides(base, ov), f"{cpath.name} [{ds}/{variant}/seed{seed}]")
                    runs.append(PlannedRun(cfg, Path(out) / name / ds / variant / f"seed{seed}"))
    if not runs:
        raise ConfigError("nothing to run: the dataset/variant selection is empty")
    return proto, runs


def _data_key(cfg: RunConfig) -> str:
    return cfg.data.model_dump_json(exclude={"batch_size", "eval_batch_size", "num_workers"})


def preflight(runs: list[PlannedRun]) -> None:
    """Load every distinct dataset once before any training; raise one error listing all failures.

    Runs already finished are not checked. Loaders cache on disk, so the later
    load for training is cheap.
    """
    from dualattn.train.data import DataError, load_splits
    from dualattn.train.run import load_summary

    errors, seen = [], set()
    for pr in runs:
        key = _data_key(pr.cfg)
        prev = load_summary(pr.run_dir)
        if key in seen or (prev is not None and prev.get("status") == "ok"):
            continue
        seen.add(key)
        try:
            load_splits(pr.cfg.data)
        except DataError as exc:
            errors.append(f"  {pr.cfg.data.name}: {exc}")
    if errors:
        raise DataError("data check failed before training (restrict with --datasets):\n" + "\n".join(errors))


def execute(runs: list[PlannedRun], *, show_progress: bool = True) -> list[Outcome]:
    """Train every planned run sequentially (data loaded once per consecutive dataset config)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from dualattn.train.data import DataError, load_splits
    from dualattn.train.run import RunError, load_summary, train_run

    console = Console(stderr=True)
    cache: dict[str, Any] = {}
    outcomes: list[Outcome] = []
    columns = (TextColumn("[bold]reproduce"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, console=console, disable=not show_progress, transient=False) as prog:
        task = prog.add_task("", total=len(runs))
        for pr in runs:
            cfg, rd = pr.cfg, pr.run_dir
            prog.update(task, description=f"{cfg.data.name}/{cfg.model.variant}/seed{cfg.seed}")
            t0 = time.perf_counter()
            prev = load_summary(rd)
            if prev is not None and prev.get("status") == "ok":
                outcomes.append(Outcome(rd, "skipped", 0.0, prev))
                prog.advance(task)
                continue
            key = _data_key(cfg)
            try:
                if key not in cache:
                    cache.clear()  # hold one dataset at a time
                    cache[key] = load_splits(cfg.data)
                resume = (rd / "checkpoints" / "last.ckpt").exists()
                summary = train_run(cfg, rd, resume=resume, splits=cache[key], progress="none")
                outcomes.append(Outcome(rd, "ok", time.perf_counter() - t0, summary))
                prog.console.print(
                    f"  {cfg.data.name:<16} {cfg.model.variant:<7} seed{cfg.seed}: "
                    f"test acc {summary['test_acc']:.3f}  ({summary['epochs']} ep, "
                    f"{time.perf_counter() - t0:.1f}s)"
                )
            except (DataError, RunError, ValueError, TypeError, RuntimeError) as exc:
                outcomes.append(Outcome(rd, "failed", time.perf_counter() - t0, load_summary(rd), str(exc)))
                prog.console.print(f"  [red]FAILED[/red] {rd}: {exc}")
            prog.advance(task)
    return outcomes
