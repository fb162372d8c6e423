from typer.testing import CliRunner

from dualattn import __version__
from dualattn.cli import app


def test_version_command_prints_package_version():
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == __version__


def test_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "version" in result.output


HEAVY = ("torch", "numpy", "lightning", "pydantic", "aeon", "scipy", "matplotlib", "transformers")


def _modules_after(code: str) -> set[str]:
    """Top-level packages imported by ``code`` in a fresh interpreter."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, env=env, check=True).stdout
    return {m.split(".")[0] for m in json.loads(out.strip().splitlines()[-1])}


def test_import_cli_does_not_import_heavy_packages():
    # `dualattn --help` must stay fast: command modules import torch & co inside the commands.
    loaded = _modules_after("import dualattn.cli")
    assert not loaded & set(HEAVY), f"import dualattn.cli imported {sorted(loaded & set(HEAVY))}"


def test_root_help_does_not_import_torch():
    loaded = _modules_after(
        "from typer.testing import CliRunner\nfrom dualattn.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "assert 'bench' in r.output and 'data' in r.output, r.output")
    assert "torch" not in loaded


def test_lazy_groups_list_and_run_their_commands():
    r = CliRunner().invoke(app, ["bench", "--help"])
    assert r.exit_code == 0, r.output
    assert "attention" in r.output
    r = CliRunner().invoke(app, ["bench", "attention", "--help"])
    assert r.exit_code == 0, r.output
    assert "--seq-lens" in r.output
    r = CliRunner().invoke(app, ["data", "list"])
    assert r.exit_code == 0, r.output
    assert "listops" in r.output.split()
    r = CliRunner().invoke(app, ["bench", "nope"])
    assert r.exit_code != 0 and "No such command" in r.output
