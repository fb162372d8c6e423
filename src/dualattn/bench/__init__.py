"""Efficiency benchmarks: timing, peak memory and the attention speed sweep.

``measure(fn, inputs, warmup, repeats) -> Timing`` (median/IQR wall time),
``measure_peak_memory(fn, inputs, device=...) -> MemorySample``,
``METHODS`` (benchmarked attention implementations), ``BenchConfig`` and
``run_benchmark`` (the sweep behind ``benchmarks/attention_speed.py`` and
``dualattn bench attention``), ``evaluate_targets`` (the issue's targets).

Names are imported lazily from their submodules, so that ``import dualattn.bench``
(and ``python -m dualattn.bench.worker``) does not pull in torch before it is needed.
"""

from __future__ import annotations

import importlib

_SOURCES = {
    "MemorySample": "memory", "measure_peak_memory": "memory",
    "DEFAULT_METHODS": "methods", "METHODS": "methods", "SH_FACTORS": "methods", "Method": "methods",
    "get_method": "methods",
    "TargetResult": "results", "add_ratios": "results", "evaluate_targets": "results", "read_csv": "results",
    "write_csv": "results",
    "Timing": "timing", "measure": "timing",
    "BenchConfig": "runner", "run_benchmark": "runner",
}


def __getattr__(name: str):
    if name in _SOURCES:
        return getattr(importlib.import_module(f"dualattn.bench.{_SOURCES[name]}"), name)
    raise AttributeError(f"module 'dualattn.bench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SOURCES))


__all__ = sorted(_SOURCES)
