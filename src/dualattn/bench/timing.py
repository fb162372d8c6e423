"""Wall-clock timing of a callable with warm-up, adaptive repeats, median and IQR."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import torch


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued kernels on ``device`` (a no-op on CPU)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@dataclass(frozen=True)
class Timing:
    """Summary of repeated wall-clock samples, in milliseconds.

    ``median_ms`` is the sample median; ``iqr_ms = q3_ms - q1_ms`` the
    inter-quartile range (0 for a single sample).
    """

    samples_ms: tuple[float, ...]
    warmup: int
    median_ms: float = field(init=False)
    q1_ms: float = field(init=False)
    q3_ms: float = field(init=False)
    iqr_ms: float = field(init=False)
    min_ms: float = field(init=False)

    def __post_init__(self) -> None:
        if len(self.samples_ms) == 0:
            raise ValueError("samples_ms: expected at least one timing sample, got none")
        s = sorted(float(x) for x in self.samples_ms)
        q1, q3 = _quartiles(s)
        object.__setattr__(self, "median_ms", statistics.median(s))
        object.__setattr__(self, "q1_ms", q1)
        object.__setattr__(self, "q3_ms", q3)
        object.__setattr__(self, "iqr_ms", q3 - q1)
        object.__setattr__(self, "min_ms", s[0])

    @property
    def repeats(self) -> int:
        return len(self.samples_ms)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples_ms"] = list(self.samples_ms)
        d["repeats"] = self.repeats
        return d


def _quartiles(sorted_samples: Sequence[float]) -> tuple[float, float]:
    """First and third quartile by linear interpolation (numpy's default rule)."""
    n = len(sorted_samples)

    def q(p: float) -> float:
        pos = p * (n - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)

    return q(0.25), q(0.75)


def adaptive_repeats(call_s: float, repeats: int, budget_s: float | None, min_repeats: int = 1) -> int:
    """Number of timed calls: ``clamp(ceil(budget_s / call_s), min_repeats, repeats)``.

    With ``budget_s=None`` this is just ``repeats``.
    """
    if budget_s is None:
        return repeats
    if call_s <= 0:
        return repeats
    return max(min_repeats, min(repeats, math.ceil(budget_s / call_s)))


def measure(
    fn: Callable[..., Any],
    inputs: Sequence[Any] = (),
    warmup: int = 1,
    repeats: int = 5,
    *,
    device: torch.device | str | None = None,
    budget_s: float | None = None,
    min_repeats: int = 1,
    prior_call_s: float | None = None,
) -> Timing:
    """Time ``fn(*inputs)``: ``warmup`` untimed calls, then up to ``repeats`` timed calls.

    Each sample is the wall time of one call, with the device synchronised
    before and after. With ``budget_s`` the number of timed calls is chosen
    adaptively from the duration of the last warm-up call (or ``prior_call_s``
    when there is no warm-up): ``clamp(ceil(budget_s / t_call), min_repeats, repeats)``.
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected an int >= 1, got {repeats!r}")
    if not isinstance(min_repeats, int) or not 1 <= min_repeats <= repeats:
        raise ValueError(f"min_repeats: expected an int in [1, repeats={repeats}], got {min_repeats!r}")
    if budget_s is not None and budget_s <= 0:
        raise ValueError(f"budget_s: expected a positive number of seconds or None, got {budget_s!r}")

    last_s = prior_call_s
    for _ in range(warmup):
        last_s = timed_call(fn, inputs, device)
    n = repeats if last_s is None else adaptive_repeats(last_s, repeats, budget_s, min_repeats)
    samples = []
    while len(samples) < n:
        t = timed_call(fn, inputs, device)
        samples.append(t * 1e3)
        if last_s is None:  # no warm-up and no prior: decide after the first sample
            last_s = t
            n = adaptive_repeats(t, repeats, budget_s, min_repeats)
    return Timing(samples_ms=tuple(samples), warmup=warmup)


def timed_call(fn: Callable[..., Any], inputs: Sequence[Any], device=None) -> float:
    """Seconds for one ``fn(*inputs)``, device synchronised before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn(*inputs)
    synchronize(device)
    return time.perf_counter() - t0
