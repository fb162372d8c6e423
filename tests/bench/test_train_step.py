"""LRA training-step benchmark: rows, ratios, reference vs fused path, CLI output files."""

import pytest
from typer.testing import CliRunner

from dualattn.bench.train_step import (
    TASKS,
    StepCase,
    build_model,
    lengths_for,
    markdown_table,
    memory_claim_lines,
    read_csv,
    run_case,
    write_csv,
)


def test_lra_tasks_and_lengths():
    assert {t: TASKS[t].seq_len for t in TASKS} == {"listops": 2000, "text": 4000, "retrieval": 4000,
                                                    "pathfinder": 1024, "image": 1024}
    assert lengths_for(TASKS["listops"], [0.25, 0.5, 1]) == [500, 1000, 2000]


def test_reference_path_materialises_and_fused_does_not():
    from dualattn.nn.attention import Attention

    for fused in (True, False):
        m = build_model(TASKS["retrieval"], "sh", 32, fused=fused)
        assert all(a.fused is fused for a in m.modules() if isinstance(a, Attention))


def test_run_case_rows_and_ratios(tmp_path):
    rows = run_case(StepCase("retrieval", 32, batch=1, variants=("softmax", "sh"), repeats=1, threads=1))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert r["step_ms"] > 0 and r["peak_mem_mb"] >= 0 and r["tokens"] == 64
        if r["variant"] == "softmax":
            assert r["time_ratio"] == 1.0
    table = markdown_table(rows)
    assert "| retrieval | 32 | sh |" in table
    back = read_csv(write_csv(rows, tmp_path / "t.csv"))
    assert [(r["variant"], r["path"]) for r in back] == [(r["variant"], r["path"]) for r in rows]
    assert any("reference path" in line for line in memory_claim_lines(rows))


@pytest.mark.slow
def test_cli_writes_csv_and_markdown_and_resumes(tmp_path):
    from dualattn.cli import app

    args = ["bench", "train-step", "--tasks", "listops", "--fractions", "0.01", "--repeats", "1", "--threads", "1",
            "--variants", "softmax,sh", "--out", str(tmp_path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    md = (tmp_path / "train_step.md").read_text()
    assert "| listops | 20 | sh |" in md and "Command:" in md
    res = CliRunner().invoke(app, args)  # second call reuses the measured cell
    assert res.exit_code == 0 and len(read_csv(tmp_path / "train_step.csv")) == 4
