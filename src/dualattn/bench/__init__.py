"""Efficiency benchmarks: timing, peak memory and the attention speed sweep.

``measure(fn, inputs, warmup, repeats) -> Timing`` (median/IQR wall time),
``measure_peak_memory(fn, inputs, device=...) -> MemorySample``,
``METHODS`` (benchmarked attention implementations), ``BenchConfig`` and
``run_benchmark`` (the sweep behind ``benchmarks/attention_speed.py`` and
``dualattn bench attention``), ``evaluate_targets`` (the issue's targets).
"""

from dualattn.bench.memory import MemorySample, measure_peak_memory
from dualattn.bench.methods import DEFAULT_METHODS, METHODS, SH_FACTORS, Method, get_method
from dualattn.bench.results import TargetResult, add_ratios, evaluate_targets, read_csv, write_csv
from dualattn.bench.timing import Timing, measure



def __getattr__(name: str):
    # lazy, so that `python -m dualattn.bench.worker` does not import the worker twice
    if name in ("BenchConfig", "run_benchmark"):
        from dualattn.bench import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'dualattn.bench' has no attribute {name!r}")


__all__ = [
    "BenchConfig", "DEFAULT_METHODS", "METHODS", "MemorySample", "Method", "SH_FACTORS", "TargetResult",
    "Timing", "add_ratios", "evaluate_targets", "get_method", "measure", "measure_peak_memory",
    "read_csv", "run_benchmark", "write_csv",
]
