"""End-to-end training runs on a tiny synthetic task (in-process)."""

import json

import pytest
import torch

from dualattn.train.callbacks import SimulatedCrash, read_metrics_csv
from dualattn.train.config import build_config
from dualattn.train.data import synthetic_splits
from dualattn.train.module import NonFiniteLossError
from dualattn.train.run import RunError, train_run

SPLITS = synthetic_splits(n=64, T=8, C=3, seed=0)


def _cfg(optim=None, **trainer):
    t = {"max_epochs": 3, "patience": None, "progress": "none", "num_threads": 1, **trainer}
    return build_config({
        "name": "t", "seed": 1,
        "data": {"name": "synthetic", "batch_size": 16},
        "model": {"dim": 16, "depth": 2, "num_heads": 2, "mlp_hidden": 32, "dropout": 0.1},
        "optim": optim or {"lr": 3e-3, "scheduler": "cosine", "warmup_epochs": 2},
        "trainer": t,
    })


def _state(run_dir):
    ck = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ck["state_dict"], ck["epoch"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("full")
    return d, train_run(_cfg(max_epochs=4), d, splits=SPLITS)


def test_run_writes_contract_files(full_run):
    d, s = full_run
    for f in ("config.yaml", "metrics.csv", "summary.json", "attention_sample.npz", "checkpoints/last.ckpt"):
        assert (d / f).exists(), f
    on_disk = json.loads((d / "summary.json").read_text())
    for key in ("dataset", "variant", "seed", "test_acc", "val_acc", "epochs", "time_per_epoch_s", "peak_mem_mb",
                "params", "flops", "head_redundancy"):
        assert key in on_disk, key
    assert on_disk["status"] == "ok" and on_disk["epochs"] == 4
    assert 0.0 <= s["test_acc"] <= 1.0 and s["params"] > 0 and s["flops"] > 0
    assert len(s["head_redundancy"]) == 2 and all(0 <= r <= 2 for r in s["head_redundancy"])
    rows = read_metrics_csv(d / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert all(r["epoch_time_s"] > 0 for r in rows)
    # warmup then cosine: lr rises in epoch 0 -> 1 and then decays
    assert rows[0]["lr"] < rows[1]["lr"] > rows[3]["lr"]


def test_learns_the_synthetic_task(tmp_path):
    s = train_run(_cfg({"lr": 1e-2}, max_epochs=15, patience=5), tmp_path, splits=SPLITS)
    assert s["val_acc"] >= 0.8, s


def test_resume_after_interruption_is_identical(full_run, tmp_path):
    d_full, s_full = full_run
    with pytest.raises(SimulatedCrash):
        train_run(_cfg(max_epochs=4, crash_after_epochs=2), tmp_path, splits=SPLITS)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    assert _state(tmp_path)[1] == 1  # last.ckpt is from the end of epoch 1
    with pytest.raises(RunError, match="--resume"):
        train_run(_cfg(max_epochs=4), tmp_path, splits=SPLITS)
    s = train_run(_cfg(max_epochs=4), tmp_path, splits=SPLITS, resume=True)
    a, b = _state(d_full)[0], _state(tmp_path)[0]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    ra, rb = read_metrics_csv(d_full / "metrics.csv"), read_metrics_csv(tmp_path / "metrics.csv")
    assert [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]
    assert s["test_acc"] == s_full["test_acc"] and s["epochs"] == 4


def test_sigint_is_recorded_and_resumable(full_run, tmp_path):
    import signal

    d_full, s_full = full_run
    old = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful Ctrl-C shutdown exits with 1
            train_run(_cfg(max_epochs=4, crash_after_epochs=3, crash_mode="sigint"), tmp_path, splits=SPLITS)
    finally:
        signal.signal(signal.SIGINT, old)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["last_epoch"] == 3 and "--resume" in s["hint"]
    s = train_run(_cfg(max_epochs=4), tmp_path, splits=SPLITS, resume=True)
    a, b = _state(d_full)[0], _state(tmp_path)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert s["test_acc"] == s_full["test_acc"]


def test_mixed_precision_request_on_cpu_falls_back(tmp_path):
    s = train_run(_cfg(max_epochs=1, precision="bf16-mixed", accelerator="cpu"), tmp_path, splits=SPLITS)
    assert s["precision"] == "32-true" and "GPU-only" in s["notes"][0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_mixed_precision(tmp_path):
    s = train_run(_cfg(max_epochs=2, precision="bf16-mixed", accelerator="gpu"), tmp_path, splits=SPLITS)
    assert s["status"] == "ok" and s["device"] == "cuda" and s["precision"] == "bf16-mixed"
    assert s["peak_mem_method"] == "cuda.max_memory_allocated" and s["peak_mem_mb"] > 0


def test_resume_rejects_changed_config(full_run, tmp_path):
    d, _ = full_run
    cfg = _cfg(max_epochs=4)
    cfg.optim.lr = 1.0
    with pytest.raises(RunError, match="optim.lr"):
        train_run(cfg, d, splits=SPLITS, resume=True)


def test_nan_loss_stops_with_step_and_failed_summary(tmp_path):
    bad = synthetic_splits(n=32, T=8, C=3, seed=0)
    bad.train.x[:] = 3e38  # finite input that overflows inside the model
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at epoch 0 step 0"):
        train_run(_cfg(), tmp_path, splits=bad)
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["status"] == "failed" and "epoch 0 step 0" in s["error"]


def test_token_input_and_model_mismatch(tmp_path):
    tok = synthetic_splits(n=32, T=8, seed=0, tokens=True)
    s = train_run(_cfg(max_epochs=1), tmp_path / "tok", splits=tok)
    assert s["status"] == "ok"
    cfg = build_config({"data": {"name": "synthetic"}, "model": {"kind": "vit", "dim": 16, "num_heads": 2},
                        "trainer": {"max_epochs": 1, "progress": "none"}})
    with pytest.raises((RunError, ValueError), match="vit|image_size"):
        train_run(cfg, tmp_path / "vit", splits=SPLITS)
    assert not (tmp_path / "vit" / "checkpoints").exists()  # nothing trained


def test_primal_variant_adds_ksvd_term(tmp_path):
    cfg = _cfg(max_epochs=1)
    cfg.model.variant = "primal"
    s = train_run(cfg, tmp_path, splits=SPLITS)
    assert s["status"] == "ok" and len(s["head_redundancy"]) == 2


def test_ksvd_weight_changes_the_primal_loss():
    from dualattn.train.module import ClassifierModule

    model = {"variant": "primal", "dim": 16, "depth": 1, "num_heads": 2, "dropout": 0.0}
    m = ClassifierModule(model, {"ksvd_weight": 0.0}, num_classes=2, max_len=8, in_features=3).eval()
    batch = (SPLITS.train.x[:8], SPLITS.train.mask[:8], SPLITS.train.y[:8])
    with pytest.warns(UserWarning):  # self.log outside a Trainer
        l0 = m._step(batch, "train")
        m.optim_cfg.ksvd_weight = 1.0
        l1 = m._step(batch, "train")
    assert torch.isfinite(l1) and not torch.isclose(l0, l1)
