import runpy
import sys
from pathlib import Path

import pytest

from typer.testing import CliRunner

from dualattn.cli import app

REPO = Path(__file__).resolve().parents[2]


def test_bench_attention_command_runs_and_prints_targets(tmp_path):
    res = CliRunner().invoke(app, [
        "bench", "attention", "--seq-lens", "32", "--methods", "sdpa,mha", "--heads", "2", "--head-dim", "8",
        "--threads", "1", "--repeats", "2", "--budget-s", "0.1", "--in-process", "--device", "cpu",
        "--out", str(tmp_path),
    ])
    assert res.exit_code == 0, res.output
    assert "N/A" in res.output and "SH >= 1.8x" in res.output
    assert (tmp_path / "attention_speed.csv").exists() and (tmp_path / "attention_speed_time.png").exists()


def test_bench_attention_rejects_bad_options(tmp_path):
    res = CliRunner().invoke(app, ["bench", "attention", "--methods", "sdpa,bogus", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "bogus" in res.output
    res = CliRunner().invoke(app, ["bench", "attention", "--seq-lens", "12,x", "--out", str(tmp_path)])
    assert res.exit_code != 0 and "seq-lens" in res.output


def test_script_is_a_thin_wrapper_with_the_same_options(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["attention_speed.py", "--help"])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(REPO / "benchmarks" / "attention_speed.py"), run_name="__main__")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--seq-lens", "--methods", "--device", "--repeats", "--out", "--quick"):
        assert opt in out
