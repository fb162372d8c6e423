"""One training run: config -> data -> Lightning fit -> evaluation -> ``summary.json``.

Run directory (``docs/architecture.md``)::

    RUN_DIR/config.yaml  metrics.csv  checkpoints/{last,best}.ckpt
            summary.json attention_sample.npz

Everything that can be checked before training (config, data, a forward pass
of the model on one batch) is checked before the Trainer starts.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from dualattn.train.callbacks import (
    CrashAfterEpochs,
    EpochCSVLogger,
    MarkInterrupted,
    SimulatedCrash,
    read_metrics_csv,
)
from dualattn.train.config import RunConfig, config_differences, dump_config
from dualattn.train.data import Splits, load_splits, make_loader
from dualattn.train.lock import RunDirLock, RunDirLocked, RunDirNotWritable
from dualattn.train.metrics import PeakMemory, count_parameters, estimate_flops, head_redundancy, saved_activation_mb
from dualattn.train.module import ClassifierModule, NonFiniteLossError

# Fields that may differ between the saved config and a --resume invocation.
RESUME_MUTABLE = {"name", "trainer.max_epochs", "trainer.crash_after_epochs", "trainer.crash_mode", "trainer.progress",
                  "trainer.patience", "trainer.min_delta", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
                  "trainer.ddp_backend", "trainer.accelerator", "data.num_workers", "data.cache_dir", "data.root"}


class RunError(RuntimeError):
    """A run cannot start or did not finish; the message says why."""


def default_run_dir(cfg: RunConfig, root: str | Path = "runs") -> Path:
    """``root/<name>/<dataset>/<variant>/seed<k>`` (variant ``bn+sh`` is written ``bn+sh``)."""
    return Path(root) / cfg.name / cfg.data.name / cfg.model.variant / f"seed{cfg.seed}"


def is_rank_zero() -> bool:
    """True in the (only or) first process of a distributed launch."""
    return all(int(os.environ.get(k, "0")) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def _check_resume_compatible(run_dir: Path, cfg: RunConfig) -> None:
    import yaml

    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    diffs = config_differences(saved, cfg.model_dump(mode="json"), RESUME_MUTABLE)
    if diffs:
        raise RunError(f"--resume: config differs from the checkpointed run in {run_dir}: " + "; ".join(diffs))


def _accelerator(cfg: RunConfig) -> str:
    acc = cfg.trainer.accelerator
    if acc == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise RunError(f"trainer.accelerator={acc!r} but no CUDA device is available")
    return "gpu" if acc == "cuda" else acc


def _progress_callback(mode: str):
    if mode == "auto":
        mode = "rich" if sys.stdout.isatty() else "none"
    if mode == "rich":
        from lightning.pytorch.callbacks import RichProgressBar

        return RichProgressBar(leave=False)
    if mode == "tqdm":
        from lightning.pytorch.callbacks import TQDMProgressBar

        return TQDMProgressBar()
    return None


def _strategy(cfg: RunConfig, accelerator: str):
    t = cfg.trainer
    if t.strategy in ("auto",):
        return "auto"
    from lightning.pytorch.strategies import DDPStrategy

    backend = t.ddp_backend if t.ddp_backend != "auto" else ("nccl" if accelerator == "gpu" else "gloo")
    start = {"ddp": "popen", "ddp_spawn": "spawn", "ddp_notebook": "fork"}[t.strategy]
    return DDPStrategy(process_group_backend=backend, start_method=start)


def _precision(cfg: RunConfig, accelerator: str, notes: list[str]) -> str:
    p = cfg.trainer.precision
    if p != "32" and accelerator != "gpu":
        notes.append(f"trainer.precision={p} requested on CPU; using 32-bit (mixed precision is GPU-only here)")
        return "32-true"
    return "32-true" if p == "32" else p


class SplitsDataModule(L.LightningDataModule):
    """Loaders built lazily so the train sampler knows the DDP rank and world size."""

    def __init__(self, splits: Splits, cfg: RunConfig) -> None:
        super().__init__()
        self.splits, self.cfg = splits, cfg

    def train_dataloader(self):
        tr, d = self.trainer, self.cfg.data
        return make_loader(self.splits.train, batch_size=d.batch_size, shuffle=True, seed=self.cfg.seed,
                           rank=tr.global_rank, world_size=tr.world_size, num_workers=d.num_workers)

    def val_dataloader(self):
        d = self.cfg.data
        return make_loader(self.splits.val, batch_size=d.eval_batch_size or d.batch_size, shuffle=False,
                           num_workers=d.num_workers)


@torch.no_grad()
def evaluate(module: ClassifierModule, ds, batch_size: int = 256, device: torch.device | None = None) -> float:
    """Accuracy of ``module`` on a whole dataset (eval mode)."""
    device = device or torch.device("cpu")
    module.eval().to(device)
    correct = 0
    for x, mask, y in make_loader(ds, batch_size=batch_size, shuffle=False):
        logits = module(x.to(device), mask.to(device))
        correct += int((logits.argmax(-1).cpu() == y).sum())
    return correct / len(ds)


@torch.no_grad()
def attention_stats(module: ClassifierModule, ds, n: int, device: torch.device) -> tuple[list[float], dict]:
    """Per-layer head redundancy over the first ``n`` samples of ``ds`` and one sample's maps."""
    module.eval().to(device)
    n = min(n, len(ds))
    x, mask = ds.x[:n].to(device), ds.mask[:n].to(device)
    _, weights = module(x, mask, return_attention=True)
    is_vit = module.model_cfg.kind == "vit"
    red = []
    for w in weights:
        red.append(head_redundancy(w.float(), None if is_vit else mask))
    L0 = int(mask[0].sum()) if not is_vit else weights[0].shape[-1]
    sample = {f"layer{i}": w[0, :, :L0, :L0].float().cpu().numpy() for i, w in enumerate(weights)}
    sample["label"] = np.array(int(ds.y[0]))
    return red, sample


def resume_checkpoint(run_dir: str | Path) -> Path:
    """``run_dir/checkpoints/last.ckpt``, the checkpoint ``--resume`` continues from."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def check_checkpoint_readable(path: Path) -> None:
    """Load ``path`` once; a truncated/corrupt file raises a one-line :class:`RunError` naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises RuntimeError/EOFError/UnpicklingError/... with long messages
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise RunError(
            f"cannot resume: checkpoint {path} is unreadable (truncated or corrupt: {reason}); "
            f"delete it to restart this run from scratch, or train without --resume into a new --run-dir"
        ) from None
    if not isinstance(state, dict) or "state_dict" not in state or "epoch" not in state:
        raise RunError(
            f"cannot resume: {path} is not a dualattn/Lightning training checkpoint (no state_dict/epoch); "
            "delete it to restart this run from scratch, or train without --resume into a new --run-dir"
        )


def train_run(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    splits: Splits | None = None,
    progress: str | None = None,
) -> dict[str, Any]:
    """Train/evaluate one config into ``run_dir`` and return its summary dict.

    ``resume=True`` continues from ``run_dir/checkpoints/last.ckpt`` (epoch,
    weights, optimizer, scheduler, early-stopping state and RNG states), giving
    the same result as an uninterrupted run with the same seed.
    One process at a time trains into a folder: rank 0 holds an OS lock on
    ``run_dir/.lock`` (:class:`~dualattn.train.lock.RunDirLock`) for the whole run.
    Raises :class:`RunError` (bad setup, folder locked or not writable, unreadable
    checkpoint), ``NonFiniteLossError`` (NaN/inf loss; ``summary.json`` records
    ``status: failed``) or the interrupting exception.
    """
    run_dir = Path(run_dir)
    lock = RunDirLock(run_dir) if is_rank_zero() else None
    if lock is not None:
        try:
            lock.acquire()
        except (RunDirLocked, RunDirNotWritable) as exc:
            raise RunError(str(exc)) from None
    try:
        return _train_run_locked(cfg, run_dir, resume=resume, splits=splits, progress=progress)
    finally:
        if lock is not None:
            lock.release()


def _train_run_locked(
    cfg: RunConfig, run_dir: Path, *, resume: bool, splits: Splits | None, progress: str | None
) -> dict[str, Any]:
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    ckpt_dir = run_dir / "checkpoints"
    last = resume_checkpoint(run_dir)
    rank0 = is_rank_zero()
    if resume:
        _check_resume_compatible(run_dir, cfg)
        if last.exists():
            check_checkpoint_readable(last)
    elif last.exists():
        raise RunError(f"{run_dir} already holds a training run; pass --resume to continue it or use a new run dir")
    notes: list[str] = []
    if resume and not last.exists():
        notes.append(f"--resume given but {last} does not exist; started from scratch")
    accelerator = _accelerator(cfg)
    precision = _precision(cfg, accelerator, notes)
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")

    if cfg.trainer.num_threads is not None and device.type == "cpu":
        torch.set_num_threads(cfg.trainer.num_threads)

    # ---- everything that can fail fast ------------------------------------------------
    splits = splits if splits is not None else load_splits(cfg.data)  # DataError (incl. unwritable cache)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    try:
        module = ClassifierModule(
            cfg.model.model_dump(mode="json"),
            cfg.optim.model_dump(mode="json"),
            num_classes=splits.num_classes,
            max_len=splits.max_len,
            in_features=splits.in_features,
            vocab_size=splits.vocab_size,
            max_epochs=cfg.trainer.max_epochs,
        )
        xb, mb = splits.train.x[:2], splits.train.mask[:2]
        with torch.no_grad():
            module.eval()
            logits = module(xb, mb)
            module.train()
        if logits.shape != (xb.shape[0], splits.num_classes):
            raise RunError(f"model returned logits {tuple(logits.shape)}, expected {(xb.shape[0], splits.num_classes)}")
    except (ValueError, TypeError) as exc:
        raise RunError(f"model/data mismatch for {cfg.data.name} with variant {cfg.model.variant!r}: {exc}") from exc
    params = count_parameters(module)
    flops = estimate_flops(module, splits.train.x[:1], splits.train.mask[:1])
    act_mb = saved_activation_mb(module, splits.train.x[: cfg.data.batch_size], splits.train.mask[: cfg.data.batch_size])
    # re-seed so that the probes above never change the training randomness
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")

    # ---- trainer ----------------------------------------------------------------------
    t = cfg.trainer
    mode = "max" if t.monitor == "val_acc" else "min"
    ckpt_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=t.monitor, mode=mode, save_top_k=1,
                              save_on_train_epoch_end=True, enable_version_counter=False)
    # Lightning's save_last only refreshes when a new best is saved; keep a true every-epoch last.ckpt.
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1,
                              save_on_train_epoch_end=True, enable_version_counter=False)
    callbacks: list = [EpochCSVLogger(run_dir / "metrics.csv"), MarkInterrupted(run_dir / "summary.json"), ckpt_cb,
                       last_cb]
    if t.patience is not None:
        callbacks.append(EarlyStopping(monitor=t.monitor, mode=mode, patience=t.patience, min_delta=t.min_delta,
                                       check_on_train_epoch_end=True))
    bar = _progress_callback(progress or t.progress)
    if bar is not None:
        callbacks.append(bar)
    if t.crash_after_epochs is not None:
        callbacks.append(CrashAfterEpochs(t.crash_after_epochs, t.crash_mode))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        warnings.filterwarnings("ignore", ".*treespec.*")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
        logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
        trainer = L.Trainer(
            default_root_dir=run_dir,
            accelerator=accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=_strategy(cfg, accelerator),
            precision=precision,
            max_epochs=t.max_epochs,
            min_epochs=t.min_epochs,
            # CUDA lacks deterministic kernels for some ops: warn there instead of failing.
            deterministic=("warn" if accelerator == "gpu" else True) if t.deterministic else False,
            logger=False,
            callbacks=callbacks,
            enable_progress_bar=bar is not None,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            gradient_clip_val=cfg.optim.grad_clip,
            limit_train_batches=t.limit_train_batches,
            log_every_n_steps=1,
        )
        summary: dict[str, Any] = {
            "name": cfg.name, "dataset": cfg.data.name, "variant": cfg.model.variant, "seed": cfg.seed,
            "status": "running", "params": params, "flops": flops, "act_mem_mb": act_mb,
        }
        if rank0:
            _write_json(run_dir / "summary.json", summary)
        t0 = time.perf_counter()
        try:
            with PeakMemory(device) as pm:
                trainer.fit(module, datamodule=SplitsDataModule(splits, cfg),
                            ckpt_path=str(last) if resume and last.exists() else None)
        except NonFiniteLossError as exc:
            if rank0:
                summary.update(status="failed", error=str(exc))
                _write_json(run_dir / "summary.json", summary)
            raise
        except BaseException:  # Ctrl-C (SystemExit from Lightning), simulated crashes, errors
            if rank0:  # MarkInterrupted already recorded the reason; add the resume hint
                s = load_summary(run_dir) or summary
                s.setdefault("error", "interrupted")
                s["hint"] = "continue with: dualattn train CONFIG --run-dir RUN_DIR --resume"
                _write_json(run_dir / "summary.json", s)
            raise
    train_time = time.perf_counter() - t0
    if trainer.interrupted:
        if rank0:
            summary.update(status="interrupted", error="training interrupted")
            _write_json(run_dir / "summary.json", summary)
        raise RunError("training was interrupted; continue with --resume")
    if not trainer.is_global_zero:
        return summary

    # ---- evaluation on rank 0 with the best checkpoint ---------------------------------
    best_path = ckpt_cb.best_model_path or str(last)
    state = torch.load(best_path, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    best_epoch = int(state.get("epoch", -1))
    eval_bs = max(cfg.data.eval_batch_size or cfg.data.batch_size, 64)
    val_acc = evaluate(module, splits.val, eval_bs, device)
    test_acc = evaluate(module, splits.test, eval_bs, device) if t.eval_test else float("nan")
    red, sample = attention_stats(module, splits.val, t.redundancy_samples, device)
    np.savez_compressed(run_dir / "attention_sample.npz", **sample)
    rows = read_metrics_csv(run_dir / "metrics.csv")
    times = [r["epoch_time_s"] for r in rows if np.isfinite(r["epoch_time_s"])]
    summary.update(
        status="ok",
        test_acc=test_acc,
        val_acc=val_acc,
        best_epoch=best_epoch,
        epochs=len(rows),
        stopped_early=len(rows) < t.max_epochs,
        time_per_epoch_s=float(np.mean(times)) if times else float("nan"),
        train_time_s=train_time,
        peak_mem_mb=pm.peak_mb,
        peak_mem_method=pm.method,
        head_redundancy=red,
        head_redundancy_metric="mean over head pairs and valid queries of 1 - cosine(attention rows)",
        device=str(device),
        precision=precision,
        world_size=trainer.world_size,
        torch=torch.__version__,
        lightning=L.__version__,
        python=platform.python_version(),
        notes=notes,
    )
    _write_json(run_dir / "summary.json", summary)
    return summary


def load_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` or None when missing/unreadable."""
    p = Path(run_dir) / "summary.json"
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
