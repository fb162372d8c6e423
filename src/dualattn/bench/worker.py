"""Measure benchmark cells in a worker process.

Two jobs, each meant for a fresh process (``python -m dualattn.bench.worker``):

* ``memory CASE_JSON``: peak memory of one forward+backward call of one
  (method, N) cell (clean heap for the CPU RSS probe, isolation from OOM);
* ``timing CASES_JSON``: wall time of all cells of one N, measured
  *round-robin* (one call of each method per round) so that load from other
  processes hits every method alike; each method's time in round ``i`` is also
  divided by SDPA's time in the same round (paired ratio).

Each prints one JSON line prefixed with ``RESULT_PREFIX``.
"""

from __future__ import annotations

import contextlib
import json
import math
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Sequence

import torch

from dualattn.bench.memory import measure_peak_memory, set_malloc_steady_state
from dualattn.bench.methods import get_method
from dualattn.bench.timing import Timing, timed_call

RESULT_PREFIX = "DUALATTN_BENCH_RESULT "
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
PAIR_BASELINE = "sdpa"
#: ``--sdpa-backend``: which kernel every SDPA call of a cell may use (``"auto"``: PyTorch chooses).
SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
WARMUP_BELOW_S = 2.0  # a full-size warm-up call in the timing job only if the memory call was shorter


@dataclass(frozen=True)
class Case:
    """One benchmark cell (method, N, shape, device); timing settings are shared per N."""

    method: str
    n: int
    batch: int = 1
    heads: int = 8
    head_dim: int = 64
    device: str = "cpu"
    dtype: str = "float32"
    threads: int | None = 2
    seed: int = 0
    sdpa_backend: str = "auto"

    def __post_init__(self) -> None:
        get_method(self.method)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.sdpa_backend not in SDPA_BACKENDS:
            raise ValueError(f"sdpa_backend: expected one of {SDPA_BACKENDS}, got {self.sdpa_backend!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: expected a positive int or None, got {self.threads!r}")

    def key(self) -> tuple:
        return (self.method, self.n, self.batch, self.heads, self.head_dim, self.device, self.dtype, self.sdpa_backend)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Case":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class TimingPlan:
    """Round-robin timing settings: ``rounds = clamp(ceil(budget_s * methods / sum(t_first)), min_repeats, repeats)``."""

    repeats: int = 5
    min_repeats: int = 1
    budget_s: float | None = 20.0
    warmup: int = 1
    reuse_first_call_s: float | None = 10.0

    def __post_init__(self) -> None:
        if self.repeats < 1 or not 1 <= self.min_repeats <= self.repeats:
            raise ValueError(f"repeats/min_repeats: expected 1 <= min_repeats <= repeats, got "
                             f"{self.min_repeats}/{self.repeats}")
        if self.budget_s is not None and self.budget_s <= 0:
            raise ValueError(f"budget_s: expected a positive number or None, got {self.budget_s!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup: expected >= 0, got {self.warmup!r}")

    def reuses_only(self, first_call_s: Sequence[float | None] | None) -> bool:
        """True when the memory-job calls alone make up all the rounds (no timing job needed)."""
        if first_call_s is None or self.reuse_first_call_s is None or not first_call_s:
            return False
        if any(f is None or f < self.reuse_first_call_s for f in first_call_s):
            return False
        return self.rounds(list(first_call_s)) == 1

    def rounds(self, first_call_s: Sequence[float]) -> int:
        if self.budget_s is None or not first_call_s:
            return self.repeats
        total = max(sum(first_call_s), 1e-9)
        return max(self.min_repeats, min(self.repeats, math.ceil(self.budget_s * len(first_call_s) / total)))


def sdpa_backend_context(name: str):
    """Context restricting every ``scaled_dot_product_attention`` call to one backend.

    ``"auto"``: no restriction; otherwise ``torch.nn.attention.sdpa_kernel([backend])``, so a
    call the backend cannot serve (e.g. flash with float32 on CUDA) raises instead of silently
    falling back. It applies to SDPA itself and to our fast paths built on SDPA.
    """
    if name not in SDPA_BACKENDS:
        raise ValueError(f"sdpa_backend: expected one of {SDPA_BACKENDS}, got {name!r}")
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[name]
    return sdpa_kernel([backend])


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_cls = getattr(torch, "OutOfMemoryError", None)
    if oom_cls is not None and isinstance(exc, oom_cls):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "can't allocate memory" in msg or "not enough memory" in msg


def _failure(exc: BaseException) -> dict[str, Any]:
    status = "oom" if _is_oom(exc) else "error"
    return {"status": status, "reason": traceback.format_exception_only(type(exc), exc)[-1].strip()[:300]}


def _setup(case: Case) -> tuple[torch.device, torch.dtype] | dict[str, Any]:
    reason = get_method(case.method).available()
    if reason is not None:
        return {"status": "unavailable", "reason": reason}
    device = torch.device(case.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return {"status": "unavailable", "reason": "CUDA not available"}
    if case.threads is not None and device.type == "cpu":
        torch.set_num_threads(case.threads)
    torch.manual_seed(case.seed)
    return device, DTYPES[case.dtype]


def _build(case: Case, device, dtype) -> tuple[Callable[..., None], tuple]:
    """Prime the code path at ``N=min(N, 64)`` (libraries, threads), then build at full size."""
    m = get_method(case.method)
    fn, inputs = m.build(case.batch, case.heads, min(case.n, 64), case.head_dim, device=device, dtype=dtype)
    fn(*inputs)
    return m.build(case.batch, case.heads, case.n, case.head_dim, device=device, dtype=dtype, seed=case.seed)


def run_memory(case: Case) -> dict[str, Any]:
    """Peak memory of the first full-size forward+backward call of ``case`` (status ok/unavailable/oom/error)."""
    setup = _setup(case)
    if isinstance(setup, dict):
        return setup
    device, dtype = setup
    try:
        with sdpa_backend_context(case.sdpa_backend):
            fn, inputs = _build(case, device, dtype)
            t0 = time.perf_counter()
            mem = measure_peak_memory(fn, inputs, device=device)
            first_s = time.perf_counter() - t0
    except Exception as exc:  # recorded, not raised: one bad cell must not stop a sweep
        return _failure(exc)
    return {
        "status": "ok", "reason": "", "first_call_ms": first_s * 1e3,
        "peak_mem_mb": mem.peak_bytes / 2**20, "process_peak_mem_mb": mem.process_peak_bytes / 2**20,
        "mem_method": mem.method,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
    }


def run_timing(cases: Sequence[Case], plan: TimingPlan, first_call_s: Sequence[float] | None = None) -> dict[str, dict]:
    """Round-robin wall time of ``cases`` (all at one N): ``{method: result}``.

    Per method: median/IQR of its samples; with SDPA among the cases also
    ``time_ratio_sdpa_paired = median_i(t_method_i / t_sdpa_i)`` over rounds.
    ``first_call_s`` (seconds, from the memory job, which ran the methods one
    after another) sizes the rounds and decides whether a full-size warm-up is
    needed (only for calls < ``WARMUP_BELOW_S``). When every first call took at
    least ``plan.reuse_first_call_s``, those calls are themselves round 0 (one-time
    costs are negligible there) and only the remaining rounds are run here.
    All cases run under their (common) ``sdpa_backend``.
    """
    backends = {c.sdpa_backend for c in cases}
    if len(backends) > 1:
        raise ValueError(f"run_timing: all cases must share one sdpa_backend, got {sorted(backends)}")
    with sdpa_backend_context(backends.pop() if backends else "auto"):
        return _run_timing(cases, plan, first_call_s)


def _run_timing(cases: Sequence[Case], plan: TimingPlan, first_call_s: Sequence[float] | None) -> dict[str, dict]:
    firsts = list(first_call_s) if first_call_s is not None else [None] * len(cases)
    if len(firsts) != len(cases):
        raise ValueError(f"first_call_s: expected {len(cases)} values, got {len(firsts)}")
    if any(c.device == "cpu" for c in cases):
        set_malloc_steady_state()
    reuse = plan.reuse_first_call_s is not None and all(f is not None and f >= plan.reuse_first_call_s for f in firsts)
    results: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[float]] = {}
    built: dict[str, tuple[Callable, tuple, torch.device]] = {}
    rounds = plan.rounds([f for f in firsts if f is not None]) if reuse else None
    for case, t_first in zip(cases, firsts):
        if reuse:
            samples[case.method] = [t_first * 1e3]
            if rounds == 1:
                continue
        setup = _setup(case)
        if isinstance(setup, dict):
            results[case.method] = setup
            samples.pop(case.method, None)
            continue
        device, dtype = setup
        try:
            fn, inputs = _build(case, device, dtype)
            n_warm = plan.warmup if (t_first is None or t_first < WARMUP_BELOW_S) else 0
            for _ in range(n_warm):
                t_first = timed_call(fn, inputs, device)
            if t_first is None:
                t_first = timed_call(fn, inputs, device)
        except Exception as exc:
            results[case.method] = _failure(exc)
            samples.pop(case.method, None)
            continue
        built[case.method] = (fn, inputs, device)
        samples.setdefault(case.method, [])
        firsts[cases.index(case)] = t_first
    if rounds is None:
        rounds = plan.rounds([f for c, f in zip(cases, firsts) if c.method in built])
    for _ in range(rounds - (1 if reuse else 0)):
        for m, (fn, inputs, device) in list(built.items()):
            try:
                samples[m].append(timed_call(fn, inputs, device) * 1e3)
            except Exception as exc:
                results[m] = _failure(exc)
                del built[m], samples[m]
    base = samples.get(PAIR_BASELINE)
    for m, s in samples.items():
        if not s:
            continue
        t = Timing(samples_ms=tuple(s), warmup=plan.warmup)
        row = {"status": "ok", "reason": "", "time_ms": t.median_ms, "time_iqr_ms": t.iqr_ms,
               "time_q1_ms": t.q1_ms, "time_q3_ms": t.q3_ms, "time_min_ms": t.min_ms, "repeats": t.repeats}
        if base is not None and len(base) == len(s):
            row["time_ratio_sdpa_paired"] = statistics.median(a / b for a, b in zip(s, base))
        results[m] = row
    return results


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "memory":
        out: Any = run_memory(Case.from_dict(json.loads(argv[1])))
    elif len(argv) == 2 and argv[0] == "timing":
        job = json.loads(argv[1])
        cases = [Case.from_dict(c) for c in job["cases"]]
        out = run_timing(cases, TimingPlan(**job["plan"]), job.get("first_call_s"))
    else:
        print("usage: python -m dualattn.bench.worker memory CASE_JSON | timing JOB_JSON", file=sys.stderr)
        return 2
    print(RESULT_PREFIX + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
