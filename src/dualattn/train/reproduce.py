"""``dualattn reproduce``: run a protocol (variants x datasets x seeds), then report.

A protocol file (built in: ``dualattn.train.protocols``; user-facing copies in ``configs/``)::

    name: paper
    variants: [softmax, linear, bn, sh, bn+sh]
    experiments:
      - config: uea.yaml                 # relative to the protocol file
        datasets: [JapaneseVowels, BasicMotions]
        seeds: 10
        dataset_seeds: {BasicMotions: 10} # per-dataset seed count (optional)
        overrides: [trainer.num_threads=1]
        dataset_overrides: {BasicMotions: [data.batch_size=8]}
        estimate_s: {default: 60, JapaneseVowels: 70}   # measured seconds per run (1 thread)

Runs land in ``OUT/<name>/<dataset>/<variant>/seed<k>/``. Finished runs
(``summary.json`` with ``status: ok``) are skipped, unfinished ones resumed
from their last checkpoint, so an interrupted ``reproduce`` can simply be
restarted. A failing run is recorded and the protocol continues.

* ``--jobs N``: independent runs in ``N`` worker processes, each with
  ``max(1, cores // N)`` torch threads unless the run config pins
  ``trainer.num_threads`` (the built-in protocols pin 1 thread, so results do
  not depend on ``N``).
* ``--shard i/k``: the runs with plan index ``j`` where ``j % k == i``
  (``0 <= i < k``), for cluster job arrays; ``dualattn report DIR...`` merges
  the folders afterwards.
* Time estimate: per pending run, the mean measured ``train_time_s`` of the
  finished runs of the same (dataset, variant) in the output folder, else the
  protocol's ``estimate_s``; wall time = greedy longest-first schedule over the jobs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dualattn.train.config import VARIANTS, ConfigError, RunConfig, apply_overrides, build_config, config_differences

BUILTIN_PROTOCOLS = {"quick": "reproduce-quick.yaml", "full": "reproduce-full.yaml", "paper": "reproduce-paper.yaml"}
DEFAULT_RUN_ESTIMATE_S = 60.0
#: Dataset-name prefixes whose loaders generate data (expensive on first use).
GENERATED_PREFIXES = ("listops", "pathfinder")


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: str
    datasets: list[str] = Field(min_length=1)
    seeds: int = Field(default=1, ge=1)
    dataset_seeds: dict[str, int] = Field(default_factory=dict)
    overrides: list[str] = Field(default_factory=list)
    dataset_overrides: dict[str, list[str]] = Field(default_factory=dict)
    estimate_s: dict[str, float] = Field(default_factory=dict)

    @field_validator("dataset_seeds")
    @classmethod
    def _positive(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: n for k, n in v.items() if n < 1}
        if bad:
            raise ValueError(f"seed counts must be >= 1, got {bad}")
        return v

    def seeds_for(self, dataset: str) -> int:
        return self.dataset_seeds.get(dataset, self.seeds)

    def estimate_for(self, dataset: str) -> float | None:
        return self.estimate_s.get(dataset, self.estimate_s.get("default"))


class Protocol(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    variants: list[str] = Field(min_length=1)
    experiments: list[Experiment] = Field(min_length=1)
    estimate_note: str = ""

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
    estimate_s: float | None = None

    @property
    def label(self) -> str:
        return f"{self.cfg.data.name}/{self.cfg.model.variant}/seed{self.cfg.seed}"


@dataclass
class Outcome:
    run_dir: Path
    status: str
    seconds: float
    summary: dict[str, Any] | None = None
    error: str = ""


# --------------------------------------------------------------------------- #
# Protocol files
# --------------------------------------------------------------------------- #
def protocols_dir() -> Path:
    """Folder of the built-in protocols and the run configs they use (package data)."""
    return Path(str(resources.files("dualattn.train") / "protocols"))


def builtin_protocol(name: str) -> Path:
    """Path of a built-in protocol: ``quick``, ``full`` or ``paper``."""
    if name not in BUILTIN_PROTOCOLS:
        raise ConfigError(f"unknown built-in protocol {name!r}; expected one of {sorted(BUILTIN_PROTOCOLS)}")
    return protocols_dir() / BUILTIN_PROTOCOLS[name]


def configs_dir() -> Path:
    """Deprecated alias of :func:`protocols_dir` (the package never reads ``configs/``)."""
    return protocols_dir()


def load_protocol(path: str | Path) -> Protocol:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"protocol file not found: {path}")
    try:
        return Protocol.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as err:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid protocol {path}: {msgs}") from None


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/k"`` -> ``(i, k)`` with ``0 <= i < k``; ConfigError otherwise."""
    try:
        i_s, k_s = text.split("/")
        i, k = int(i_s), int(k_s)
    except ValueError:
        raise ConfigError(f"--shard: expected i/k with integers 0 <= i < k (e.g. 0/4), got {text!r}") from None
    if k < 1 or not 0 <= i < k:
        raise ConfigError(f"--shard: expected 0 <= i < k, got i={i}, k={k}")
    return i, k


def select_shard(runs: list[PlannedRun], shard: tuple[int, int] | None) -> list[PlannedRun]:
    """Runs with plan index ``j % k == i`` (round robin keeps every shard's mix of datasets alike)."""
    if shard is None:
        return runs
    i, k = shard
    return runs[i::k]


def plan_runs(
    protocol_path: str | Path,
    *,
    out: str | Path = "runs",
    name: str | None = None,
    datasets: list[str] | None = None,
    variants: list[str] | None = None,
    seeds: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    shard: tuple[int, int] | None = None,
) -> tuple[Protocol, list[PlannedRun]]:
    """Expand a protocol into validated run configs (all validated before anything trains).

    The order is deterministic (experiment, dataset, variant, seed), so ``shard``
    selects the same runs on every machine.
    """
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
                for seed in range(seeds if seeds is not None else exp.seeds_for(ds)):
                    ov = [f"name={name}", f"data.name={ds}", f"model.variant={variant}", f"seed={seed}"]
                    ov += exp.overrides + exp.dataset_overrides.get(ds, []) + list(overrides)
                    cfg = build_config(apply_overrides(base, ov), f"{cpath.name} [{ds}/{variant}/seed{seed}]")
                    runs.append(PlannedRun(cfg, Path(out) / name / ds / variant / f"seed{seed}", exp.estimate_for(ds)))
    if not runs:
        raise ConfigError("nothing to run: the dataset/variant selection is empty")
    total = len(runs)
    runs = select_shard(runs, shard)
    if not runs:
        raise ConfigError(f"--shard {shard[0]}/{shard[1]}: this shard is empty (the plan has {total} runs)")
    check_not_stale(runs)
    return proto, runs


# Saved-config fields that do not change a finished run's result (paths, display, threads).
_IGNORED_WHEN_COMPARING = {"trainer.progress", "trainer.num_threads", "data.num_workers", "data.cache_dir", "data.root"}


def saved_config_differences(pr: PlannedRun) -> list[str]:
    """``["trainer.min_delta: 0.0 -> 0.001", ...]`` (saved -> planned) for a run folder made with another config.

    Empty when the folder has no saved ``config.yaml`` or it matches the plan.
    """
    path = Path(pr.run_dir) / "config.yaml"
    try:
        saved_raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    try:
        saved = RunConfig.model_validate(saved_raw).model_dump(mode="json")
    except ValidationError:
        return [f"{path} is not a valid run config"]
    return config_differences(saved, pr.cfg.model_dump(mode="json"), _IGNORED_WHEN_COMPARING)


def check_not_stale(runs: list[PlannedRun]) -> None:
    """Refuse to skip or resume runs whose folder holds a run made with a different config.

    Otherwise a changed protocol (say, a new stopping rule) would silently mix old and new results.
    """
    stale = [(pr, diff) for pr in runs if (diff := saved_config_differences(pr))]
    if stale:
        pr, diff = stale[0]
        raise ConfigError(
            f"{len(stale)} run folder(s) hold runs made with a different config than the protocol now plans, "
            f"e.g. {pr.run_dir} (saved -> planned): {'; '.join(diff[:3])}. Delete those folders to rerun them, "
            "or write to another --out/--name.")


# --------------------------------------------------------------------------- #
# Status and time estimate
# --------------------------------------------------------------------------- #
def load_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``run_dir/summary.json`` or None (same as ``dualattn.train.run.load_summary``, without importing Lightning)."""
    import json

    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_done(pr: PlannedRun) -> bool:
    prev = load_summary(pr.run_dir)
    return prev is not None and prev.get("status") == "ok"


def _measured_seconds(runs: list[PlannedRun]) -> dict[tuple[str, str], float]:
    """Mean ``train_time_s`` of finished runs per (dataset, variant) among ``runs``' folders."""
    acc: dict[tuple[str, str], list[float]] = {}
    for pr in runs:
        s = load_summary(pr.run_dir)
        if s and s.get("status") == "ok" and isinstance(s.get("train_time_s"), (int, float)):
            acc.setdefault((pr.cfg.data.name, pr.cfg.model.variant), []).append(float(s["train_time_s"]))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def schedule_makespan(seconds: list[float], jobs: int) -> float:
    """Wall time of a greedy longest-first assignment of ``seconds`` to ``jobs`` workers."""
    loads = [0.0] * max(1, jobs)
    for s in sorted(seconds, reverse=True):
        i = loads.index(min(loads))
        loads[i] += s
    return max(loads)


@dataclass
class Estimate:
    pending: int
    done: int
    serial_s: float
    wall_s: float
    jobs: int
    measured: int  # pending runs whose estimate comes from finished runs in this folder
    assumed: int  # pending runs with no estimate (DEFAULT_RUN_ESTIMATE_S assumed)

    def describe(self) -> str:
        src = []
        if self.measured:
            src.append(f"{self.measured} from finished runs here")
        if self.pending - self.measured - self.assumed:
            src.append(f"{self.pending - self.measured - self.assumed} from the protocol's estimate_s")
        if self.assumed:
            src.append(f"{self.assumed} assumed {DEFAULT_RUN_ESTIMATE_S:.0f} s")
        return (f"estimate: {self.pending} runs to do ({self.done} already done): ~{self.serial_s / 60:.0f} min of "
                f"single-thread run time, ~{self.wall_s / 60:.0f} min wall with --jobs {self.jobs} "
                f"(per-run times: {', '.join(src) or 'none'})")


def estimate(runs: list[PlannedRun], jobs: int = 1) -> Estimate:
    """Time estimate for the pending runs of ``runs`` (see module doc)."""
    measured = _measured_seconds(runs)
    secs, n_meas, n_assumed, n_done = [], 0, 0, 0
    for pr in runs:
        if is_done(pr):
            n_done += 1
            continue
        m = measured.get((pr.cfg.data.name, pr.cfg.model.variant))
        if m is not None:
            secs.append(m)
            n_meas += 1
        elif pr.estimate_s is not None:
            secs.append(pr.estimate_s)
        else:
            secs.append(DEFAULT_RUN_ESTIMATE_S)
            n_assumed += 1
    return Estimate(len(secs), n_done, sum(secs), schedule_makespan(secs, jobs), jobs, n_meas, n_assumed)


# --------------------------------------------------------------------------- #
# Data preflight
# --------------------------------------------------------------------------- #
def _data_key(cfg: RunConfig) -> str:
    return cfg.data.model_dump_json(exclude={"batch_size", "eval_batch_size", "num_workers"})


def data_cost(name: str) -> int:
    """0: read from files (UEA/UCR); 1: small built-in data; 2: generated (ListOps, Pathfinder)."""
    low = name.lower()
    if low.startswith(GENERATED_PREFIXES):
        return 2
    from dualattn.data.base import _REGISTRY
    from dualattn.data.ucr import AEON_UCR
    from dualattn.data.uea import PAPER_UEA, SHIPPED

    files = {n.lower() for n in (*PAPER_UEA, *SHIPPED, *AEON_UCR)}
    if low in files or low not in _REGISTRY:
        return 0
    return 1


def _file_check(cfg: RunConfig) -> str | None:
    """Cheap existence check of a file-based dataset's files; the error text or None."""
    from dualattn.data.ucr import AEON_UCR, available_offline
    from dualattn.data.uea import SHIPPED, UEA_ROOT_ENV, find_ts_files

    name = cfg.data.name
    if cfg.data.root is None and name in AEON_UCR:
        return None if available_offline().get(name) else f"{name} is not in the installed aeon wheel"
    if cfg.data.root is None and not os.environ.get(UEA_ROOT_ENV) and name not in SHIPPED:
        from dualattn.data.base import _REGISTRY

        if name.lower() not in _REGISTRY:
            return None  # unknown names fail with the loader's own message below
    try:
        find_ts_files(name, cfg.data.root)
    except FileNotFoundError as exc:
        return str(exc)
    return None


def preflight(runs: list[PlannedRun], *, log: Callable[[str], None] | None = None) -> None:
    """Check every distinct dataset of the pending runs, cheapest first; raise one error listing all failures.

    Order: (1) file existence of UEA/UCR datasets (no parsing), (2) loading
    file-based and small built-in datasets, (3) only if all of that passed,
    the generated datasets (ListOps, Pathfinder: minutes on first use, cached
    on disk afterwards). Finished runs are not checked.
    """
    from dualattn.train.data import DataError, load_splits

    say = log or (lambda _msg: None)
    distinct: dict[str, RunConfig] = {}
    for pr in runs:
        key = _data_key(pr.cfg)
        if key not in distinct and not is_done(pr):
            distinct[key] = pr.cfg
    cfgs = sorted(distinct.values(), key=lambda c: data_cost(c.data.name))

    errors = [f"  {c.data.name}: {e}" for c in cfgs if data_cost(c.data.name) == 0 and (e := _file_check(c))]
    if errors:
        raise DataError("data check failed before training (restrict with --datasets):\n" + "\n".join(errors))
    for stage in (0, 1, 2):
        for c in (c for c in cfgs if data_cost(c.data.name) == stage):
            if stage == 2:
                say(f"preflight: preparing {c.data.name} (generated once, then cached)")
            try:
                load_splits(c.data)
            except DataError as exc:
                errors.append(f"  {c.data.name}: {exc}")
        if errors:
            raise DataError("data check failed before training (restrict with --datasets):\n" + "\n".join(errors))


# --------------------------------------------------------------------------- #
# Execution
# --------------------------------------------------------------------------- #
_WORKER_CACHE: dict[str, Any] = {}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _exit_when_orphaned(parent: int, poll_s: float = 1.0) -> None:
    """Worker watchdog: stop this process once its ``reproduce`` parent is gone.

    A killed parent would otherwise leave its workers training (and writing run
    folders) unseen. The run keeps its last epoch checkpoint, so a later
    ``reproduce`` resumes it; the run-folder lock is released by the OS.
    """
    while True:
        time.sleep(poll_s)
        if os.getppid() != parent:
            os._exit(3)


def _worker_init(threads: int, parent: int | None = None) -> None:
    import threading

    import torch

    torch.set_num_threads(threads)
    if parent is not None:
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True, name="orphan-watchdog").start()


def run_one(cfg_json: dict[str, Any], run_dir: str) -> tuple[str, float, dict | None, str]:
    """Train one run (in this process); returns ``(status, seconds, summary, error)``.

    Used by the worker processes of ``--jobs N``; keeps the last dataset loaded.
    """
    from dualattn.train.data import DataError, load_splits
    from dualattn.train.run import RunError, train_run

    cfg = RunConfig.model_validate(cfg_json)
    rd = Path(run_dir)
    t0 = time.perf_counter()
    prev = load_summary(rd)
    if prev is not None and prev.get("status") == "ok":
        return "skipped", 0.0, prev, ""
    key = _data_key(cfg)
    try:
        if key not in _WORKER_CACHE:
            _WORKER_CACHE.clear()  # hold one dataset at a time
            _WORKER_CACHE[key] = load_splits(cfg.data)
        resume = (rd / "checkpoints" / "last.ckpt").exists()
        summary = train_run(cfg, rd, resume=resume, splits=_WORKER_CACHE[key], progress="none")
        return "ok", time.perf_counter() - t0, summary, ""
    except (DataError, RunError, ValueError, TypeError, RuntimeError) as exc:
        return "failed", time.perf_counter() - t0, load_summary(rd), str(exc)


def execute(runs: list[PlannedRun], *, jobs: int = 1, show_progress: bool = True) -> list[Outcome]:
    """Train every planned run: in-process (``jobs=1``) or in ``jobs`` spawned worker processes.

    Runs are submitted in plan order; workers keep the last dataset in memory.
    Results are identical for any ``jobs`` when the configs pin ``trainer.num_threads``.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if jobs < 1:
        raise ValueError(f"jobs: expected >= 1, got {jobs}")
    console = Console(stderr=True)
    columns = (TextColumn("[bold]reproduce"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    outcomes: dict[int, Outcome] = {}

    def record(i: int, pr: PlannedRun, res: tuple[str, float, dict | None, str], prog) -> None:
        status, secs, summary, err = res
        outcomes[i] = Outcome(pr.run_dir, status, secs, summary, err)
        c = pr.cfg
        if status == "ok":
            prog.console.print(f"  {c.data.name:<16} {c.model.variant:<7} seed{c.seed}: test acc "
                               f"{summary['test_acc']:.3f}  ({summary['epochs']} ep, {secs:.1f}s)")
        elif status == "failed":
            prog.console.print(f"  [red]FAILED[/red] {pr.run_dir}: {err}")
        prog.advance(task)

    with Progress(*columns, console=console, disable=not show_progress, transient=False) as prog:
        task = prog.add_task("", total=len(runs))
        if jobs == 1:
            for i, pr in enumerate(runs):
                prog.update(task, description=pr.label)
                record(i, pr, run_one(pr.cfg.model_dump(mode="json"), str(pr.run_dir)), prog)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            threads = max(1, available_cores() // jobs)
            todo = [(i, pr) for i, pr in enumerate(runs) if not is_done(pr)]
            for i, pr in enumerate(runs):
                if is_done(pr):
                    record(i, pr, ("skipped", 0.0, _summary(pr), ""), prog)
            prog.update(task, description=f"{jobs} workers x {threads} threads")
            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                     initializer=_worker_init, initargs=(threads, os.getpid())) as pool:
                futs = {pool.submit(run_one, pr.cfg.model_dump(mode="json"), str(pr.run_dir)): (i, pr)
                        for i, pr in todo}
                for fut in as_completed(futs):
                    i, pr = futs[fut]
                    try:
                        res = fut.result()
                    except Exception as exc:  # a worker died (e.g. killed for memory)
                        res = ("failed", 0.0, None, f"worker process failed: {type(exc).__name__}: {exc}")
                    record(i, pr, res, prog)
    return [outcomes[i] for i in range(len(runs))]


def _summary(pr: PlannedRun) -> dict | None:
    return load_summary(pr.run_dir)
