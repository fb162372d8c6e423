import pytest

from dualattn.bench import methods as methods_mod
from dualattn.bench.results import read_csv
from dualattn.bench.runner import BenchConfig, memory_row, run_benchmark
from dualattn.bench.worker import Case, TimingPlan, run_memory, run_timing

TINY = dict(heads=8, head_dim=8, threads=1, repeats=3, budget_s=0.2, isolate=False)
METHODS = ("sdpa", "mha", "softmax", "softmax-ref", "sh")


def _config(tmp_path, **kw):
    base = dict(seq_lens=(32, 64), methods=METHODS, mem_cap_gb=0.5 / 1024, out_dir=tmp_path, **TINY)
    base.update(kw)
    return BenchConfig(**base)


def _available(name):
    return methods_mod.get_method(name).available() is None


def test_sweep_writes_rows_ratios_and_skips_over_cap(tmp_path):
    cfg = _config(tmp_path)
    rows = run_benchmark(cfg, progress=False)
    assert len(rows) == len(cfg.seq_lens) * len(METHODS)
    got = {(r["method"], r["n"]): r for r in rows}
    ref64 = got[("softmax-ref", 64)]
    assert ref64["status"] == "skipped" and "cap" in ref64["reason"] and ref64["time_ms"] is None
    for n in (32, 64):
        sd = got[("sdpa", n)]
        assert sd["status"] == "ok" and sd["time_ratio_sdpa"] == 1.0 and sd["time_ratio_sdpa_paired"] == 1.0
        assert sd["time_ms"] > 0 and 1 <= sd["repeats"] <= 3 and sd["peak_mem_mb"] >= 0
        mha = got[("mha", n)]
        assert mha["status"] == "ok" and mha["time_ratio_sdpa"] == pytest.approx(mha["time_ms"] / sd["time_ms"])
        assert mha["time_ratio_sdpa_paired"] > 0
    for name in ("softmax", "sh"):
        expected = "ok" if _available(name) else "unavailable"
        assert got[(name, 32)]["status"] == expected
    on_disk = read_csv(cfg.csv_path)
    assert [(r["method"], r["n"], r["status"]) for r in on_disk] == [(r["method"], r["n"], r["status"]) for r in rows]
    for suffix in ("_time.png", "_memory.png", ".md"):
        assert (tmp_path / f"attention_speed{suffix}").stat().st_size > 0
    assert "Targets:" in (tmp_path / "attention_speed.md").read_text()


def test_resume_keeps_finished_rows_and_redoes_missing(tmp_path):
    first = run_benchmark(_config(tmp_path, methods=("sdpa",)), progress=False)
    seen = []
    again = run_benchmark(_config(tmp_path, methods=("sdpa",), resume=True), progress=False, on_row=seen.append)
    assert seen == []
    assert [r["timestamp"] for r in again] == [r["timestamp"] for r in first]
    rows = run_benchmark(_config(tmp_path, methods=("sdpa", "mha"), resume=True), progress=False,
                         on_row=seen.append)
    assert sorted((r["method"], r["n"]) for r in seen) == [("mha", 32), ("mha", 64)]
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert all(r["time_ratio_sdpa_paired"] > 0 for r in rows if r["method"] == "mha")


def test_worker_reports_oom_and_errors_instead_of_raising(monkeypatch):
    def boom(*a, **k):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(methods_mod.Method, "build", boom)
    case = Case(method="sdpa", n=16, heads=2, head_dim=4, threads=1)
    assert run_memory(case)["status"] == "oom"
    assert run_timing([case], TimingPlan(repeats=1))["sdpa"]["status"] == "oom"


def test_timing_rounds_follow_budget():
    plan = TimingPlan(repeats=10, min_repeats=2, budget_s=1.0)
    assert plan.rounds([0.5, 0.5]) == 2 and plan.rounds([0.01, 0.01]) == 10 and plan.rounds([2.0, 3.0]) == 2
    with pytest.raises(ValueError, match="min_repeats"):
        TimingPlan(repeats=2, min_repeats=3)


@pytest.mark.parametrize("kw,match", [
    (dict(seq_lens=()), "seq_lens"), (dict(methods=("nope",)), "method"), (dict(device="tpu"), "device"),
    (dict(dtype="int8"), "dtype"), (dict(mem_cap_gb=-1.0), "mem_cap_gb"), (dict(repeats=0), "repeats"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        BenchConfig(**kw)


@pytest.mark.slow
def test_isolated_worker_measures_in_a_fresh_process(tmp_path):
    cfg = BenchConfig(seq_lens=(64,), methods=("sdpa",), heads=2, head_dim=8, threads=1, repeats=2,
                      budget_s=0.1, out_dir=tmp_path, isolate=True)
    (row,) = run_benchmark(cfg, progress=False)
    assert row["status"] == "ok", row["reason"]
    assert row["mem_method"].startswith(("rss-hwm", "ru_maxrss")) and row["peak_mem_mb"] >= 0
    assert row["process_peak_mem_mb"] > 50  # a whole python+torch process
    assert row["time_ms"] > 0 and row["repeats"] >= 1


def test_memory_row_skips_without_starting_a_worker():
    row = memory_row(Case(method="softmax-ref", n=16384), mem_cap_bytes=2**30)
    assert row["status"] == "skipped" and "GiB" in row["reason"] and row["est_mem_mb"] > 8 * 1024


def test_long_first_calls_count_as_round_zero():
    cases = [Case(method="sdpa", n=16, heads=2, head_dim=4, threads=1), Case(method="mha", n=16, heads=2,
                                                                              head_dim=4, threads=1)]
    plan = TimingPlan(repeats=3, budget_s=1.0, reuse_first_call_s=5.0)
    assert plan.reuses_only([20.0, 40.0]) and not plan.reuses_only([1.0, 40.0])
    res = run_timing(cases, plan, [20.0, 40.0])  # nothing is re-run: one round from the memory job
    assert res["sdpa"]["repeats"] == 1 and res["sdpa"]["time_ms"] == 20000.0
    assert res["mha"]["time_ratio_sdpa_paired"] == 2.0
    res = run_timing(cases, TimingPlan(repeats=3, budget_s=1e6, reuse_first_call_s=5.0), [20.0, 40.0])
    assert res["mha"]["repeats"] == 3 and res["mha"]["time_ms"] < 40000.0  # round 0 plus two real rounds
