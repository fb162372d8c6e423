"""Lightning callbacks: per-epoch CSV metrics with timing, and a crash hook for resume tests."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import lightning as L

CSV_FIELDS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s")


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``metrics.csv`` as floats (missing values become NaN)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with path.open() as f:
        for row in csv.DictReader(f):
            rows.append({k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()})
    return rows


class EpochCSVLogger(L.Callback):
    """Append one row per finished epoch to ``metrics.csv`` (rank 0 only).

    ``epoch_time_s`` is the wall time from train-epoch start to the end of that
    epoch's validation. On resume, rows of epochs that will be re-run are dropped
    so the file always describes one consistent training history.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._t0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        keep = [r for r in read_metrics_csv(self.path) if r["epoch"] < trainer.current_epoch]
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            w.writeheader()
            for r in keep:
                r = {**r, "epoch": int(r["epoch"]), "step": int(r["step"])}
                w.writerow({k: _fmt(r.get(k)) for k in CSV_FIELDS})

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train_loss": m.get("train_loss"),
            "train_acc": m.get("train_acc"),
            "val_loss": m.get("val_loss"),
            "val_acc": m.get("val_acc"),
            "lr": self._lr,  # the rate used during this epoch
            "epoch_time_s": time.perf_counter() - self._t0,
        }
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=CSV_FIELDS).writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(v) -> str:
    if v is None:
        return ""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return repr(v)
    return str(v)


class SimulatedCrash(RuntimeError):
    """Raised by :class:`CrashAfterEpochs` in ``mode="raise"``."""


class CrashAfterEpochs(L.Callback):
    """Simulate an interruption in the middle of epoch ``n`` (after ``n`` checkpointed epochs).

    Fires at the second training batch of epoch ``n`` (the first if the epoch has
    one batch), so ``last.ckpt`` of epoch ``n-1`` exists and part of epoch ``n``
    is lost, as with a real kill. ``mode``: ``"raise"`` raises
    :class:`SimulatedCrash`; ``"sigint"`` sends SIGINT (Ctrl-C: Lightning shuts
    down and exits 1); ``"sigkill"`` sends SIGKILL (nothing is cleaned up).
    """

    def __init__(self, n: int, mode: str = "raise") -> None:
        if mode not in ("raise", "sigint", "sigkill"):
            raise ValueError(f"mode must be 'raise', 'sigint' or 'sigkill', got {mode!r}")
        self.n, self.mode = n, mode

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch < self.n:
            return
        if batch_idx < min(1, trainer.num_training_batches - 1):
            return
        if self.mode == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.mode == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
        raise SimulatedCrash(f"simulated interruption in epoch {trainer.current_epoch} batch {batch_idx}")


class MarkInterrupted(L.Callback):
    """On any exception inside ``fit`` (Ctrl-C included, which Lightning turns into
    ``sys.exit(1)``), mark ``summary.json`` as interrupted/failed with the reason."""

    def __init__(self, summary_path: str | Path) -> None:
        self.path = Path(summary_path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not trainer.is_global_zero or not self.path.is_file():
            return
        try:
            s = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            s = {}
        failed = type(exception).__name__ == "NonFiniteLossError"
        s.update(status="failed" if failed else "interrupted",
                 error=f"{type(exception).__name__}: {exception}".rstrip(": "),
                 last_epoch=trainer.current_epoch, last_step=trainer.global_step)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(s, indent=2))
        os.replace(tmp, self.path)
