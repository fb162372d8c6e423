"""Dataset loading/validation for training and reproducible data loaders.

Shuffling uses :class:`EpochShuffleSampler`: the permutation of epoch ``e`` is
drawn from a generator seeded with ``(seed, e)`` only, so a run resumed at
epoch ``e`` sees exactly the batches an uninterrupted run would. Under DDP the
permutation is sharded by rank (same scheme as ``DistributedSampler``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A dataset is unusable for training; raised before any training starts."""


@dataclass
class Splits:
    """Train/val/test datasets of one config plus the shapes the model needs."""

    train: object
    val: object
    test: object

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def max_len(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def in_features(self) -> int | None:
        return None if self.train.vocab_size is not None else int(self.train.x.shape[2])

    @property
    def vocab_size(self) -> int | None:
        return self.train.vocab_size


def validate_split(ds, split: str) -> None:
    """Check a ``SequenceData``-like object: attributes, shapes, dtypes, finiteness, labels."""
    for attr in ("x", "mask", "y", "classes"):
        if not hasattr(ds, attr):
            raise DataError(f"{split} split: dataset has no attribute {attr!r} (expected SequenceData)")
    x, mask, y = ds.x, ds.mask, ds.y
    n = len(y)
    if n == 0:
        raise DataError(f"{split} split is empty")
    if x.shape[0] != n or mask.shape != x.shape[:2]:
        raise DataError(
            f"{split} split: inconsistent shapes x={tuple(x.shape)} mask={tuple(mask.shape)} y={tuple(y.shape)}"
        )
    if mask.dtype != torch.bool:
        raise DataError(f"{split} split: mask must be bool, got {mask.dtype}")
    if not mask.any(1).all():
        bad = int((~mask.any(1)).nonzero()[0, 0])
        raise DataError(f"{split} split: sample {bad} has no real steps (mask all False)")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise DataError(f"{split} split: x contains NaN/inf")
    if int(y.min()) < 0 or int(y.max()) >= len(ds.classes):
        raise DataError(f"{split} split: labels outside [0, {len(ds.classes)})")


def load_splits(data_cfg) -> Splits:
    """Load and validate train/val/test with ``dualattn.data.load_dataset``."""
    from dualattn.data import load_dataset

    out = {}
    for split in SPLITS:
        try:
            ds = load_dataset(
                data_cfg.name,
                split,
                root=data_cfg.root,
                cache_dir=data_cfg.cache_dir,
                seed=data_cfg.seed,
                **data_cfg.options,
            )
        except (ValueError, TypeError, FileNotFoundError) as exc:
            raise DataError(f"cannot load data.name={data_cfg.name!r} split={split!r}: {exc}") from exc
        validate_split(ds, split)
        out[split] = ds
    tr = out["train"]
    for split in ("val", "test"):
        ds = out[split]
        if ds.x.shape[2:] != tr.x.shape[2:] or ds.vocab_size != tr.vocab_size or list(ds.classes) != list(tr.classes):
            raise DataError(f"{split} split does not match train (features/vocab/classes)")
        if ds.x.shape[1] > tr.x.shape[1]:
            raise DataError(f"{split} split is longer ({ds.x.shape[1]}) than train ({tr.x.shape[1]})")
    return Splits(**out)


class EpochShuffleSampler(Sampler[int]):
    """Permutation seeded by ``(seed, epoch)``; ``set_epoch`` is called by Lightning each epoch."""

    def __init__(self, n: int, seed: int, *, rank: int = 0, world_size: int = 1) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch = 0
        self.num_samples = -(-n // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        total = self.num_samples * self.world_size
        perm += perm[: total - self.n]  # pad so every rank gets the same count
        return iter(perm[self.rank : total : self.world_size])

    def __len__(self) -> int:
        return self.num_samples


def make_loader(ds, *, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                num_workers: int = 0) -> DataLoader:
    """DataLoader over a SequenceData; eval loaders keep order, train loaders use EpochShuffleSampler."""
    sampler = EpochShuffleSampler(len(ds), seed, rank=rank, world_size=world_size) if shuffle else None
    # A private generator: creating an iterator draws a base seed from it instead of the global RNG,
    # so the global RNG (dropout) only advances inside training steps -> exact resume.
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        ds,
        generator=gen,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def synthetic_splits(n: int = 96, T: int = 8, C: int = 3, *, seed: int = 0, tokens: bool = False) -> Splits:
    """A tiny learnable task for smoke tests: variable-length sequences, label = sign of channel 0's mean.

    Continuous ``x ~ N(0, 1)`` with ``x[:, :, 0] += +-1`` by class, lengths in
    ``[T/2, T]`` (zero-padded, ``mask`` marks real steps). With ``tokens=True``
    the task is: does token 1 occur more often than token 2 (ids in 1..4).
    """
    from dualattn.data import SequenceData

    g = torch.Generator().manual_seed(seed)

    def make(m: int, split: str):
        y = torch.randint(0, 2, (m,), generator=g)
        lengths = torch.randint(max(1, T // 2), T + 1, (m,), generator=g)
        mask = torch.arange(T)[None, :] < lengths[:, None]
        if tokens:
            x = torch.randint(1, 5, (m, T), generator=g)
            x[:, 0] = torch.where(y == 1, 1, 2)
            x[:, 1] = torch.where(y == 1, 1, 2)
            x = x * mask
            return SequenceData(x, mask, y, ["a", "b"], vocab_size=5, name="synthetic", split=split)
        x = torch.randn(m, T, C, generator=g)
        x[:, :, 0] += (2 * y - 1)[:, None].float()
        x = x * mask[..., None]
        return SequenceData(x, mask, y, ["neg", "pos"], name="synthetic", split=split)

    return Splits(make(n, "train"), make(max(8, n // 4), "val"), make(max(8, n // 4), "test"))
