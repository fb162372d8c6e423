import numpy as np
import pytest
import torch

from dualattn.bench.timing import Timing, adaptive_repeats, measure


def test_timing_statistics_match_numpy():
    samples = (5.0, 1.0, 9.0, 3.0, 7.0, 2.0)
    t = Timing(samples_ms=samples, warmup=1)
    q1, med, q3 = np.percentile(samples, [25, 50, 75])
    assert t.median_ms == pytest.approx(med)
    assert t.q1_ms == pytest.approx(q1) and t.q3_ms == pytest.approx(q3)
    assert t.iqr_ms == pytest.approx(q3 - q1)
    assert t.min_ms == 1.0 and t.repeats == 6
    assert Timing(samples_ms=(4.0,), warmup=0).iqr_ms == 0.0


def test_timing_rejects_empty():
    with pytest.raises(ValueError, match="samples_ms"):
        Timing(samples_ms=(), warmup=0)


def test_measure_calls_warmup_plus_repeats_and_passes_inputs():
    seen = []
    x = torch.ones(3)
    measure(lambda a: seen.append(a), (x,), warmup=2, repeats=4)
    assert len(seen) == 6 and all(s is x for s in seen)


def test_measure_samples_reflect_work():
    a = torch.randn(256, 256)
    fast = measure(lambda: a.sum(), warmup=1, repeats=5)
    slow = measure(lambda: [a @ a for _ in range(10)], warmup=1, repeats=5)
    assert all(s > 0 for s in fast.samples_ms)
    assert slow.median_ms > fast.median_ms


@pytest.mark.parametrize("call_s,budget,expected", [(0.5, 2.0, 4), (10.0, 2.0, 1), (0.001, 2.0, 7), (1.0, None, 7)])
def test_adaptive_repeats(call_s, budget, expected):
    assert adaptive_repeats(call_s, repeats=7, budget_s=budget, min_repeats=1) == expected


def test_measure_budget_uses_prior_call_time():
    calls = []
    t = measure(lambda: calls.append(1), warmup=0, repeats=10, budget_s=1.0, min_repeats=2, prior_call_s=0.5)
    assert t.repeats == 2 == len(calls)


@pytest.mark.parametrize("kw,match", [
    (dict(warmup=-1), "warmup"), (dict(repeats=0), "repeats"), (dict(budget_s=0.0), "budget_s"),
    (dict(repeats=2, min_repeats=3), "min_repeats"),
])
def test_measure_validates_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        measure(lambda: None, **kw)


def test_measure_rejects_non_callable():
    with pytest.raises(TypeError, match="fn"):
        measure(42)
