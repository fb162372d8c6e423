"""Run the attention speed/memory sweep.

For each N: every (method, N) cell whose estimated peak exceeds the memory cap
is skipped with the reason recorded; the others get a fresh worker process
that measures the peak memory of one forward+backward call; then one worker
times all successful methods of that N round-robin (see ``dualattn.bench.worker``).
The CSV is rewritten after every step, so an interrupted sweep can ``resume``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from dualattn.bench.memory import available_memory_bytes
from dualattn.bench.methods import DEFAULT_METHODS, get_method
from dualattn.bench.results import COLUMNS, add_ratios, evaluate_targets, markdown_table, plot, read_csv, write_csv
from dualattn.bench.worker import DTYPES, RESULT_PREFIX, SDPA_BACKENDS, Case, TimingPlan, run_memory, run_timing

DEFAULT_SEQ_LENS: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_SEQ_LENS: tuple[int, ...] = (256, 512, 1024)
FINAL_STATUSES = ("skipped", "oom")  # kept on resume even without a time


@dataclass
class BenchConfig:
    """Settings of one sweep. ``mem_cap_gb=None`` means 60% of the memory available now.

    Timing per N is round-robin over the methods with
    ``rounds = clamp(ceil(budget_s * n_methods / sum(t_first_call)), min_repeats, repeats)``;
    when every first (memory-measuring) call of an N took >= ``reuse_first_call_s``
    those calls count as the first round (see ``dualattn.bench.worker.run_timing``).
    """

    seq_lens: tuple[int, ...] = DEFAULT_SEQ_LENS
    methods: tuple[str, ...] = DEFAULT_METHODS
    device: str = "cpu"
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    dtype: str = "float32"
    sdpa_backend: str = "auto"  # restrict every SDPA call to one kernel (see worker.sdpa_backend_context)
    threads: int | None = 2
    warmup: int = 1
    repeats: int = 5
    min_repeats: int = 1
    budget_s: float | None = 20.0
    reuse_first_call_s: float | None = 10.0
    mem_cap_gb: float | None = None
    isolate: bool = True
    cell_timeout_s: float = 3600.0
    out_dir: Path = field(default_factory=lambda: Path("benchmarks/results"))
    stem: str = "attention_speed"
    resume: bool = False

    def __post_init__(self) -> None:
        self.seq_lens = tuple(int(n) for n in self.seq_lens)
        self.methods = tuple(dict.fromkeys(self.methods))
        self.out_dir = Path(self.out_dir)
        if not self.seq_lens or any(n < 1 for n in self.seq_lens):
            raise ValueError(f"seq_lens: expected positive ints, got {self.seq_lens!r}")
        if not self.methods:
            raise ValueError("methods: expected at least one method name")
        for m in self.methods:
            get_method(m)
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:<i>', got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"sdpa_backend: expected one of {SDPA_BACKENDS}, got {self.sdpa_backend!r}")
        if self.device.startswith("cuda") and self.sdpa_backend == "flash" and self.dtype not in ("float16", "bfloat16"):
            raise ValueError(f"sdpa_backend: flash attention on CUDA needs dtype float16 or bfloat16, got {self.dtype!r}")
        if self.mem_cap_gb is not None and self.mem_cap_gb <= 0:
            raise ValueError(f"mem_cap_gb: expected a positive number or None, got {self.mem_cap_gb!r}")
        self.plan  # validates repeats / min_repeats / budget_s / warmup

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchConfig":
        """Small sweep for smoke tests: N in ``QUICK_SEQ_LENS``, 3 rounds, 2 s per cell."""
        base: dict[str, Any] = dict(seq_lens=QUICK_SEQ_LENS, repeats=3, budget_s=2.0)
        base.update(overrides)
        return cls(**base)

    @property
    def plan(self) -> TimingPlan:
        return TimingPlan(repeats=self.repeats, min_repeats=min(self.min_repeats, self.repeats),
                          budget_s=self.budget_s, warmup=self.warmup,
                          reuse_first_call_s=self.reuse_first_call_s)

    @property
    def csv_path(self) -> Path:
        return self.out_dir / f"{self.stem}.csv"

    def cases(self, n: int) -> list[Case]:
        return [Case(method=m, n=n, batch=self.batch, heads=self.heads, head_dim=self.head_dim,
                     device=self.device, dtype=self.dtype, threads=self.threads, sdpa_backend=self.sdpa_backend)
                for m in self.methods]

    def mem_cap_bytes(self) -> int | None:
        if self.mem_cap_gb is not None:
            return int(self.mem_cap_gb * 2**30)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            return None
        avail = available_memory_bytes(self.device)
        return None if avail is None else int(0.6 * avail)


def base_row(case: Case) -> dict[str, Any]:
    """The descriptive CSV columns of ``case`` plus its memory estimate."""
    m = get_method(case.method)
    est = m.estimate_peak_bytes(case.batch, case.heads, case.n, case.head_dim, DTYPES[case.dtype])
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update({
        "method": case.method, "label": m.label, "impl": m.impl, "n": case.n, "batch": case.batch,
        "heads": case.heads, "head_dim": case.head_dim, "device": case.device, "dtype": case.dtype,
        "sdpa_backend": case.sdpa_backend,
        "threads": case.threads, "est_mem_mb": est / 2**20, "torch_version": torch.__version__,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "reason": "",
    })
    return row


def call_worker(args: Sequence[str], *, threads: int | None, timeout_s: float) -> Any:
    """Run ``python -m dualattn.bench.worker *args`` and return its JSON result.

    Failures come back as ``{"status": "timeout"|"oom"|"error", "reason": ...}``.
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    try:
        proc = subprocess.run([sys.executable, "-m", "dualattn.bench.worker", *args],
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "reason": f"worker exceeded {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    if proc.returncode in (-9, 137):
        return {"status": "oom", "reason": "worker killed (SIGKILL; likely out of memory)"}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    return {"status": "error", "reason": f"worker exit {proc.returncode}: {tail[0][:300]}"}


def memory_row(case: Case, *, mem_cap_bytes: int | None, isolate: bool = True,
               timeout_s: float = 3600.0) -> dict[str, Any]:
    """CSV row for ``case`` after the memory step: skipped / unavailable / ok / oom / error."""
    m = get_method(case.method)
    row = base_row(case)
    est = row["est_mem_mb"] * 2**20
    if mem_cap_bytes is not None and est > mem_cap_bytes:
        why = "materialises B*H*N*Nk scores" if m.materialises else "inputs and gradients"
        row.update(status="skipped",
                   reason=f"estimated peak {est / 2**30:.1f} GiB > cap {mem_cap_bytes / 2**30:.1f} GiB ({why})")
        return row
    reason = m.available()
    if reason is not None:  # no need to start a worker
        row.update(status="unavailable", reason=reason)
        return row
    if isolate:
        result = call_worker(["memory", json.dumps(case.to_dict())], threads=case.threads, timeout_s=timeout_s)
    else:
        result = run_memory(case)
    row.update(result)
    if row.get("threads") is None:
        row["threads"] = case.threads
    return row


def timing_results(cases: Sequence[Case], plan: TimingPlan, first_call_s: Sequence[float] | None, *,
                   isolate: bool = True, timeout_s: float = 3600.0) -> dict[str, dict[str, Any]]:
    """``{method: timing result}`` for ``cases`` of one N, measured round-robin in one worker."""
    if not cases:
        return {}
    if not isolate or plan.reuses_only(first_call_s):
        return run_timing(cases, plan, first_call_s)
    job = {"cases": [c.to_dict() for c in cases], "plan": plan.__dict__,
           "first_call_s": None if first_call_s is None else list(first_call_s)}
    out = call_worker(["timing", json.dumps(job)], threads=cases[0].threads, timeout_s=timeout_s)
    if "status" in out and isinstance(out.get("status"), str):  # the whole worker failed
        return {c.method: dict(out) for c in cases}
    return out


def timing_groups(cases: Sequence[Case]) -> list[list[Case]]:
    """Split one N's cases into round-robin groups: fast paths and baselines, then the
    materialising reference paths (with SDPA again, for their paired ratios) in their own worker.

    A materialising call moves gigabytes (3 GB for the reference softmax at N = 4096); timed in
    the same rounds, its aftermath (page reclaim, cache and TLB refill on a 2-core machine)
    slowed the method after it by up to 30%: BN measured 1.33x SDPA right after it and
    0.97-1.06x without it. The first group's SDPA result is the one reported.
    """
    heavy = [c for c in cases if get_method(c.method).materialises]
    light = [c for c in cases if c not in heavy]
    groups = [light] if light else []
    if heavy:
        groups.append([c for c in light if c.method == "sdpa"] + heavy)
    return groups


def _row_key(r: dict[str, Any]) -> tuple:
    return (r["method"], r["n"], r["batch"], r["heads"], r["head_dim"], r["device"], r["dtype"],
            r.get("sdpa_backend") or "auto")


def _done(r: dict[str, Any] | None) -> bool:
    return r is not None and (r.get("status") in FINAL_STATUSES
                              or (r.get("status") == "ok" and r.get("time_ms") is not None))


def run_benchmark(config: BenchConfig, *, progress: bool = True,
                  on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Measure every (method, N) of ``config``; write ``<stem>.csv`` after each step, PNGs and MD at the end.

    With ``config.resume`` finished rows of an existing CSV (ok with a time,
    skipped, oom) are kept. ``on_row`` is called with every newly finished row.
    Returns all rows with ratios to SDPA.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rows: dict[tuple, dict[str, Any]] = {}
    if config.resume and config.csv_path.exists():
        rows = {_row_key(r): r for r in read_csv(config.csv_path) if _done(r)}
    cap = config.mem_cap_bytes()
    all_cases = [c for n in config.seq_lens for c in config.cases(n)]
    todo_n = [n for n in config.seq_lens if not all(_done(rows.get(c.key())) for c in config.cases(n))]
    steps = sum(len(config.cases(n)) + 1 for n in todo_n)

    def save() -> None:
        write_csv(add_ratios(_ordered(rows, all_cases)), config.csv_path)

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), disable=not progress, transient=False) as bar:
        task = bar.add_task("attention bench", total=steps)
        for n in todo_n:
            cases = [c for c in config.cases(n) if not _done(rows.get(c.key()))]
            bar.advance(task, len(config.cases(n)) - len(cases))
            for case in cases:
                bar.update(task, description=f"memory {case.method:>11} N={n:<6}")
                rows[case.key()] = memory_row(case, mem_cap_bytes=cap, isolate=config.isolate,
                                              timeout_s=config.cell_timeout_s)
                save()
                bar.advance(task)
            timed = [c for c in cases if rows[c.key()]["status"] == "ok"]
            sd = next((c for c in config.cases(n) if c.method == "sdpa"), None)
            if timed and sd is not None and sd not in timed and rows.get(sd.key(), {}).get("status") == "ok":
                timed.insert(0, sd)  # re-time SDPA alongside for paired ratios (its old time is kept)
            bar.update(task, description=f"timing {len(timed)} methods N={n:<6}")
            results: dict[str, dict[str, Any]] = {}
            for group in timing_groups(timed):
                firsts = [rows[c.key()].get("first_call_ms") for c in group]
                firsts_s = None if any(f is None for f in firsts) else [f / 1e3 for f in firsts]
                out = timing_results(group, config.plan, firsts_s, isolate=config.isolate,
                                     timeout_s=config.cell_timeout_s)
                results.update({k: v for k, v in out.items() if k not in results})
            for c in timed:
                r = rows[c.key()]
                if _done(r):
                    continue
                res = results.get(c.method, {"status": "error", "reason": "no timing result"})
                r.update(res)
                if on_row is not None:
                    on_row(r)
            for c in cases:
                if c not in timed and on_row is not None:
                    on_row(rows[c.key()])
            save()
            bar.advance(task)
    final = add_ratios(_ordered(rows, all_cases))
    write_csv(final, config.csv_path)
    plot(final, config.out_dir, config.stem)
    write_markdown(final, config.out_dir / f"{config.stem}.md")
    return final


def _ordered(rows: dict[tuple, dict[str, Any]], cases: Sequence[Case]) -> list[dict[str, Any]]:
    """Rows of this sweep in plan order, then any other rows kept from a resumed CSV."""
    keys = [c.key() for c in cases]
    seen = set(keys)
    return [rows[k] for k in keys if k in rows] + [r for k, r in rows.items() if k not in seen]


def write_markdown(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Markdown summary: the table and one PASS/FAIL/N/A line per target."""
    path = Path(path)
    lines = [markdown_table(rows), "", "Targets:", ""]
    for dev in dict.fromkeys(r["device"] for r in rows):
        lines += [f"* [{t.status}] ({dev}) {t.name}: {t.detail}" for t in evaluate_targets(rows, dev)]
    path.write_text("\n".join(lines) + "\n")
    return path
