"""LightningModule wrapping a classifier: cross-entropy, accuracy, optimizers, RNG-exact resume."""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from dualattn.train.metrics import accuracy


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN/inf; the message names epoch and step."""


def _rng_state() -> dict[str, Any]:
    """Global RNG states as plain types/tensors (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ClassifierModule(L.LightningModule):
    """Train/evaluate a ``SequenceClassifier``/``ViT`` built from a model config dict.

    Loss: ``CE(logits, y)`` (optional label smoothing), plus
    ``optim.ksvd_weight * KSVD`` for the ``primal`` variant. Logged per epoch:
    ``train_loss, train_acc, val_loss, val_acc`` (and ``test_*``). The global RNG
    states are stored in every checkpoint and restored when training resumes,
    so an interrupted seeded run continues bit-identically.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optim: dict[str, Any],
        *,
        num_classes: int,
        max_len: int,
        in_features: int | None = None,
        vocab_size: int | None = None,
        max_epochs: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        from dualattn.nn.models import build_model
        from dualattn.train.config import ModelConfig, OptimConfig

        self.model_cfg = ModelConfig.model_validate(model)
        self.optim_cfg = OptimConfig.model_validate(optim)
        self.model = build_model(
            self.model_cfg, num_classes=num_classes, max_len=max_len, in_features=in_features, vocab_size=vocab_size
        )
        self._pending_rng: dict[str, Any] | None = None

    def forward(self, x, mask=None, return_attention: bool = False):
        return self.model(x, mask, return_attention=return_attention)

    def _step(self, batch, stage: str):
        x, mask, y = batch
        logits = self.model(x, mask)
        smoothing = self.optim_cfg.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits.float(), y, label_smoothing=smoothing)
        if stage == "train" and self.model_cfg.variant == "primal" and self.optim_cfg.ksvd_weight > 0:
            from dualattn.nn import ksvd_regularizer

            ksvd = ksvd_regularizer(self.model)
            self.log("train_ksvd", ksvd.detach(), on_step=False, on_epoch=True, batch_size=y.shape[0])
            loss = loss + self.optim_cfg.ksvd_weight * ksvd
        if stage == "train" and not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at epoch {self.current_epoch} step {self.global_step}; "
                "lower optim.lr, set optim.grad_clip, or check the data for NaN/inf"
            )
        acc = accuracy(logits.detach(), y)
        n = y.shape[0]
        self.log(f"{stage}_loss", loss.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, sync_dist=True, batch_size=n,
                 prog_bar=stage != "test")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        o = self.optim_cfg
        params = self.parameters()
        if o.name == "radam":
            opt = torch.optim.RAdam(params, lr=o.lr, weight_decay=o.weight_decay)
        elif o.name == "adam":
            opt = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
        elif o.name == "adamw":
            opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)
        if o.scheduler == "none" and o.warmup_epochs == 0:
            return opt
        total, warm = max(1, self.hparams.max_epochs), o.warmup_epochs

        def factor(epoch: int) -> float:
            """Linear warmup to 1, then cosine decay to 0 (or constant when scheduler='none')."""
            if warm and epoch < warm:
                return (epoch + 1) / warm
            if o.scheduler == "none":
                return 1.0
            t = (epoch - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # --- exact resume -------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dualattn_rng"] = _rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_rng = checkpoint.get("dualattn_rng")

    def on_train_start(self) -> None:
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None
