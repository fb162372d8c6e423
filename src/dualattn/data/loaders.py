"""DataLoaders for :class:`SequenceData` with a collate that trims batch padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .base import SequenceData


def trim_collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Stack ``(x, mask, y)`` items and cut the time axis to ``T_b = 1 + max{t : mask[i, t]}``.

    Steps after the last real step of every sequence in the batch are padding
    only, so dropping them changes no masked computation but saves time.
    """
    if len(batch) == 0:
        raise ValueError("batch: expected at least one (x, mask, y) item")
    xs, masks, ys = zip(*batch)
    x, mask, y = torch.stack(xs), torch.stack(masks), torch.stack(ys)
    if mask.dtype != torch.bool or mask.shape != x.shape[:2]:
        raise ValueError(f"mask: expected bool (B, T) matching x {tuple(x.shape)}, got {mask.dtype} {tuple(mask.shape)}")
    real = mask.any(dim=0)
    t = int(real.nonzero().max()) + 1 if real.any() else 1
    return x[:, :t], mask[:, :t], y


def make_dataloaders(
    train: Dataset | None,
    val: Dataset | None = None,
    test: Dataset | None = None,
    batch_size: int = 64,
    seed: int = 0,
    num_workers: int = 0,
    *,
    eval_batch_size: int | None = None,
    trim: bool = True,
    drop_last: bool = False,
) -> tuple[DataLoader | None, DataLoader | None, DataLoader | None]:
    """``(train_loader, val_loader, test_loader)``; a ``None`` dataset gives a ``None`` loader.

    The train loader shuffles with a ``torch.Generator`` seeded by ``seed`` (the
    same seed gives the same batch order); val/test keep their order.
    """
    for arg, v in (("batch_size", batch_size), ("num_workers", num_workers)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{arg}: expected an int, got {v!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
    eval_bs = batch_size if eval_batch_size is None else eval_batch_size
    if isinstance(eval_bs, bool) or not isinstance(eval_bs, int) or eval_bs < 1:
        raise ValueError(f"eval_batch_size: expected a positive int, got {eval_batch_size!r}")
    collate = trim_collate if trim else None
    for arg, ds in (("train", train), ("val", val), ("test", test)):
        if ds is not None and not isinstance(ds, Dataset):
            raise TypeError(f"{arg}: expected a torch Dataset (e.g. SequenceData), got {type(ds).__name__}")
        if isinstance(ds, SequenceData) and len(ds) == 0:
            raise ValueError(f"{arg}: dataset is empty")

    def loader(ds, shuffle: bool, bs: int) -> DataLoader | None:
        if ds is None:
            return None
        gen = torch.Generator().manual_seed(int(seed)) if shuffle else None
        return DataLoader(ds, batch_size=bs, shuffle=shuffle, generator=gen, num_workers=num_workers,
                          collate_fn=collate, drop_last=drop_last and shuffle,
                          persistent_workers=num_workers > 0)

    return loader(train, True, batch_size), loader(val, False, eval_bs), loader(test, False, eval_bs)
