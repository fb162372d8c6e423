"""Time and peak memory of one training step of the LRA models, per attention variant and path.

One step = forward + cross-entropy + backward + ``AdamW.step`` on one batch.
Models: the LRA recipe of Nystromformer / Primal-Attention (2 pre-norm layers,
d_model 64, 2 heads, FFN hidden 128, dropout 0.1; ``dualattn.nn.SequenceClassifier``)
on the five LRA tasks at their lengths (``TASKS``):

=========== ====== ===================================================
task        N      input
=========== ====== ===================================================
listops     2000   token ids, vocab 18, 10 classes
text        4000   byte ids, vocab 256, 2 classes
retrieval   2x4000 two byte documents through one encoder, head on
                   ``[z1, z2, z1 * z2, z1 - z2]``, 2 classes
pathfinder  1024   32x32 pixels, 1 channel, 2 classes
image       1024   32x32 grey CIFAR-10 pixels as ids (vocab 256), 10 classes
=========== ====== ===================================================

Paths: ``reference`` (``Attention.fused = False``: every variant forms the
``N x N`` weights, as the paper's implementation did) and ``fused`` (default
fast paths: SDPA for softmax, O(N) linear attention, fused BN statistics, SH
pooled keys). Each (task, N) is measured in a fresh worker process: for every
(path, variant) one warm-up step, then the peak memory of one step
(``bench.memory.measure_peak_memory``: CUDA max allocated, or the CPU RSS
high-water mark with small-mmap malloc so freed buffers return to the OS),
then ``repeats`` timed steps measured round-robin over the variants of a path
(load from other processes hits every variant alike). Ratios are to softmax
on the same path in the same process.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

RESULT_PREFIX = "DUALATTN_TRAIN_STEP "
VARIANTS = ("softmax", "linear", "bn", "sh", "bn+sh")
PATHS = ("reference", "fused")
LRA_MODEL = dict(dim=64, depth=2, num_heads=2, mlp_hidden=128, dropout=0.1)


@dataclass(frozen=True)
class Task:
    name: str
    seq_len: int
    num_classes: int
    vocab_size: int | None  # None: continuous input with in_features channels
    in_features: int | None = None
    pairs: bool = False  # retrieval: two documents per example


TASKS: dict[str, Task] = {
    "listops": Task("listops", 2000, 10, 18),
    "text": Task("text", 4000, 2, 256),
    "retrieval": Task("retrieval", 4000, 2, 256, pairs=True),
    "pathfinder": Task("pathfinder", 1024, 2, None, in_features=1),
    "image": Task("image", 1024, 10, 256),
}


@dataclass(frozen=True)
class StepCase:
    """One (task, N) worker job: every path x variant."""

    task: str
    seq_len: int
    batch: int = 2
    variants: tuple[str, ...] = VARIANTS
    paths: tuple[str, ...] = PATHS
    repeats: int = 3
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0


def build_model(task: Task, variant: str, seq_len: int, fused: bool):
    """The LRA classifier for ``task`` (retrieval: a dual encoder) with ``Attention.fused = fused``."""
    import torch
    from torch import nn

    from dualattn.nn.attention import Attention
    from dualattn.nn.models import SequenceClassifier

    enc = SequenceClassifier(task.num_classes, max_len=seq_len, in_features=task.in_features,
                             vocab_size=task.vocab_size, variant=variant, mlp_ratio=LRA_MODEL["mlp_hidden"] / 64,
                             **{k: v for k, v in LRA_MODEL.items() if k != "mlp_hidden"})
    for m in enc.modules():
        if isinstance(m, Attention):
            m.fused = fused
    if not task.pairs:
        return enc

    class DualEncoder(nn.Module):
        """LRA retrieval: ``logits = MLP([z1, z2, z1 * z2, z1 - z2])`` with one shared encoder."""

        def __init__(self) -> None:
            super().__init__()
            self.enc = enc
            self.enc.head = nn.Identity()
            d = LRA_MODEL["dim"]
            self.head = nn.Sequential(nn.Linear(4 * d, d), nn.GELU(), nn.Linear(d, task.num_classes))

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            b = x.shape[0] // 2
            z = self.enc(x, mask)
            z1, z2 = z[:b], z[b:]
            return self.head(torch.cat([z1, z2, z1 * z2, z1 - z2], -1))

    return DualEncoder()


def make_batch(task: Task, seq_len: int, batch: int, seed: int, device):
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = 2 * batch if task.pairs else batch
    if task.vocab_size is not None:
        x = torch.randint(1, task.vocab_size, (rows, seq_len), generator=g)
    else:
        x = torch.randn(rows, seq_len, task.in_features, generator=g)
    mask = torch.ones(rows, seq_len, dtype=torch.bool)
    y = torch.randint(0, task.num_classes, (batch,), generator=g)
    return x.to(device), mask.to(device), y.to(device)


def run_case(case: StepCase) -> list[dict[str, Any]]:
    """Measure every (path, variant) of ``case`` in this process; one row per cell."""
    import torch
    from torch.nn import functional as F

    from dualattn.bench.memory import measure_peak_memory, set_malloc_steady_state
    from dualattn.bench.timing import timed_call

    if case.threads is not None:
        torch.set_num_threads(case.threads)
    task = TASKS[case.task]
    dev = torch.device(case.device)
    x, mask, y = make_batch(task, case.seq_len, case.batch, case.seed, dev)
    rows: list[dict[str, Any]] = []
    for path in case.paths:
        steps = {}
        for variant in case.variants:
            torch.manual_seed(case.seed)
            model = build_model(task, variant, case.seq_len, fused=path == "fused").to(dev).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(model=model, opt=opt) -> None:
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x, mask), y)
                loss.backward()
                opt.step()

            row = {"task": task.name, "seq_len": case.seq_len, "tokens": case.seq_len * (2 if task.pairs else 1),
                   "batch": case.batch, "variant": variant, "path": path, "device": case.device,
                   "threads": torch.get_num_threads(), "status": "ok"}
            try:
                row["saved_mb"] = saved_mb(model, x, mask)
                warm_s = timed_call(step, (), dev)  # allocates the optimizer state
                mem = measure_peak_memory(step, (), device=dev)
                set_malloc_steady_state()
                row.update(first_step_s=warm_s, peak_mem_mb=mem.peak_bytes / 2**20, mem_method=mem.method)
                steps[variant] = (step, [])
            except (RuntimeError, ValueError) as exc:  # OOM or unsupported
                row.update(status="failed", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            rows.append(row)
        for _ in range(case.repeats):  # round robin over the variants
            for variant, (step, samples) in steps.items():
                samples.append(timed_call(step, (), dev))
        for row in rows:
            if row["path"] == path and row["variant"] in steps:
                s = steps[row["variant"]][1]
                row.update(step_ms=1e3 * statistics.median(s), step_ms_min=1e3 * min(s), repeats=len(s))
    add_ratios(rows)
    return rows


def saved_mb(model, x, mask) -> float:
    """MiB autograd saves for backward in one forward (deterministic; ``train.metrics.saved_activation_mb``)."""
    from dualattn.train.metrics import saved_activation_mb

    return saved_activation_mb(model, x, mask)


def add_saved_mb(rows: list[dict[str, Any]], device: str = "cpu") -> list[dict[str, Any]]:
    """Fill ``saved_mb`` for rows measured without it (forward passes only), then recompute the ratios."""
    import torch

    for r in rows:
        if r.get("status") != "ok" or r.get("saved_mb") is not None or r.get("task") not in TASKS:
            continue
        task = TASKS[r["task"]]
        torch.manual_seed(0)
        model = build_model(task, r["variant"], int(r["seq_len"]), fused=r["path"] == "fused").to(device)
        x, mask, _ = make_batch(task, int(r["seq_len"]), int(r.get("batch", 1)), 0, device)
        r["saved_mb"] = saved_mb(model, x, mask)
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``time_ratio``, ``mem_ratio``, ``saved_ratio`` = value / softmax's on the same (task, N, path)."""
    base = {(r["task"], r["seq_len"], r["path"]): r for r in rows if r["variant"] == "softmax" and r["status"] == "ok"}
    for r in rows:
        b = base.get((r["task"], r["seq_len"], r["path"]))
        if b is None or r["status"] != "ok":
            continue
        if b.get("step_ms"):
            r["time_ratio"] = r["step_ms"] / b["step_ms"]
        if b.get("peak_mem_mb"):
            r["mem_ratio"] = r["peak_mem_mb"] / b["peak_mem_mb"]
        if b.get("saved_mb") and r.get("saved_mb") is not None:
            r["saved_ratio"] = r["saved_mb"] / b["saved_mb"]


def run_in_worker(case: StepCase, timeout_s: float = 900.0) -> list[dict[str, Any]]:
    """:func:`run_case` in a fresh ``python -m dualattn.bench.train_step`` process (clean heap)."""
    env = dict(os.environ)
    if case.threads is not None:
        env["OMP_NUM_THREADS"] = str(case.threads)
    try:
        proc = subprocess.run([sys.executable, "-m", "dualattn.bench.train_step", json.dumps(asdict(case))],
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return [{"task": case.task, "seq_len": case.seq_len, "status": "failed",
                 "error": f"worker timed out after {timeout_s:.0f} s"}]
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return [{"task": case.task, "seq_len": case.seq_len, "status": "failed",
             "error": f"worker exit {proc.returncode}: {err}"}]


def lengths_for(task: Task, fractions: Sequence[float]) -> list[int]:
    """``round(f * N_task)`` for each fraction (e.g. 0.25, 0.5, 1 -> ListOps 500, 1000, 2000)."""
    return sorted({max(8, int(round(f * task.seq_len))) for f in fractions})


CSV_COLUMNS = ("task", "seq_len", "tokens", "batch", "variant", "path", "step_ms", "time_ratio", "peak_mem_mb",
               "mem_ratio", "saved_mb", "saved_ratio", "first_step_s", "repeats", "threads", "device", "mem_method", "status", "error")


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``train_step.csv`` with numbers parsed (empty cells dropped)."""
    import csv

    out = []
    with Path(path).open() as f:
        for row in csv.DictReader(f):
            r: dict[str, Any] = {}
            for k, v in row.items():
                if v in ("", None):
                    continue
                try:
                    r[k] = int(v) if k in ("seq_len", "tokens", "batch", "repeats", "threads") else float(v)
                except ValueError:
                    r[k] = v
            out.append(r)
    return out


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One row per (task, N, variant): time and memory on both paths, ratios to softmax of the same path."""
    def cell(r, key, fmt):
        return fmt.format(r[key]) if r and r.get(key) is not None else "n/a"

    idx = {(r["task"], r["seq_len"], r.get("variant"), r.get("path")): r for r in rows}
    keys = sorted({(r["task"], r["seq_len"], r.get("variant")) for r in rows if r.get("variant")},
                  key=lambda k: (list(TASKS).index(k[0]) if k[0] in TASKS else 99, k[1], VARIANTS.index(k[2])
                                 if k[2] in VARIANTS else 99))
    out = ["| task | N | variant | ref. step (ms) | ref. time ratio | ref. peak mem (MB) | ref. mem ratio "
           "| ref. saved-act. ratio | fused step (ms) | fused time ratio | fused peak mem (MB) | fused mem ratio "
           "| fused saved-act. ratio |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t, n, v in keys:
        a, b = idx.get((t, n, v, "reference")), idx.get((t, n, v, "fused"))
        out.append(f"| {t} | {n} | {v} | {cell(a, 'step_ms', '{:.0f}')} | {cell(a, 'time_ratio', '{:.2f}')} "
                   f"| {cell(a, 'peak_mem_mb', '{:.0f}')} | {cell(a, 'mem_ratio', '{:.2f}')} "
                   f"| {cell(a, 'saved_ratio', '{:.2f}')} "
                   f"| {cell(b, 'step_ms', '{:.0f}')} | {cell(b, 'time_ratio', '{:.2f}')} "
                   f"| {cell(b, 'peak_mem_mb', '{:.0f}')} | {cell(b, 'mem_ratio', '{:.2f}')} "
                   f"| {cell(b, 'saved_ratio', '{:.2f}')} |")
    return "\n".join(out)


def memory_claim_lines(rows: Sequence[dict[str, Any]], claimed: float = 0.47) -> list[str]:
    """Where SH / BN+SH cut training-step memory by >= ``claimed`` - 5 points relative to softmax."""
    out = []
    for key, what in (("mem_ratio", "peak memory"), ("saved_ratio", "saved activations")):
        for path in PATHS:
            cells = [r for r in rows if r.get("path") == path and r.get("variant") in ("sh", "bn+sh")
                     and r.get(key) is not None]
            if not cells:
                continue
            best = min(cells, key=lambda r: r[key])
            hold = [f"{r['task']} N={r['seq_len']} {r['variant']}" for r in cells if 1 - r[key] >= claimed - 0.05]
            out.append(f"- {what}, {path} path: largest reduction {100 * (1 - best[key]):.0f} % "
                       f"({best['task']} N={best['seq_len']} {best['variant']}); >= {100 * (claimed - 0.05):.0f} % "
                       f"in {len(hold)} of {len(cells)} cells" + (f": {', '.join(hold)}" if hold else ""))
    return out


def run_train_step_benchmark(tasks: Sequence[str], fractions: Sequence[float], *, batch: int = 2,
                             repeats: int = 3, threads: int | None = None, device: str = "cpu",
                             variants: Sequence[str] = VARIANTS, paths: Sequence[str] = PATHS,
                             progress: bool = True, on_case=None,
                             timeout_s: float = 900.0) -> list[dict[str, Any]]:
    """Every task at every fraction of its LRA length, each (task, N) in its own worker process.

    ``on_case(rows_so_far)`` is called after each (task, N) (e.g. to rewrite the CSV)."""
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"tasks: unknown {bad}; expected names from {list(TASKS)}")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"variants: unknown {bad}; expected names from {VARIANTS}")
    bad = [p for p in paths if p not in PATHS]
    if bad:
        raise ValueError(f"paths: unknown {bad}; expected names from {PATHS}")
    if not fractions or any(not 0 < f <= 4 for f in fractions):
        raise ValueError(f"fractions: expected numbers in (0, 4], got {list(fractions)}")
    cases = [StepCase(t, n, batch, tuple(variants), tuple(paths), repeats, threads, device)
             for t in tasks for n in lengths_for(TASKS[t], fractions)]
    rows: list[dict[str, Any]] = []
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as prog:
        bar = prog.add_task("train-step", total=len(cases))
        for c in cases:
            prog.update(bar, description=f"{c.task} N={c.seq_len}")
            rows += run_in_worker(c, timeout_s)
            if on_case is not None:
                on_case(rows)
            prog.advance(bar)
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    d = json.loads(argv[0])
    d["variants"], d["paths"] = tuple(d["variants"]), tuple(d["paths"])
    rows = run_case(StepCase(**d))
    print(RESULT_PREFIX + json.dumps(rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
