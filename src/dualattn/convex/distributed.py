"""Sum-reductions over data-parallel processes (``torch.distributed``) for the convex solvers.

Data-parallel convention: every process holds a shard of the samples (its own
``X``, ``y``); the program's loss is the sum over all shards, so values,
gradients, ``A^*`` products and certificate sums are **sum-all-reduced**.  After
every reduction all processes hold bit-identical tensors, so deterministic
optimisers (L-BFGS, Lanczos with a seeded start vector) follow the same path on
every process and the factors stay identical without being broadcast.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Comm:
    """All-reduce helper; a no-op when ``torch.distributed`` is not initialised (one process)."""

    def __init__(self, group=None) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.active = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
        self.group = group
        self.world_size = dist.get_world_size(group) if self.active else 1
        self.rank = dist.get_rank(group) if self.active else 0

    def sum_(self, t: Tensor) -> Tensor:
        """In-place sum over processes; returns ``t``."""
        if self.active:
            self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM, group=self.group)
        return t

    def sum(self, x) -> float | Tensor:
        """Sum of a float or a tensor over processes (tensors are copied first)."""
        if isinstance(x, Tensor):
            return self.sum_(x.detach().clone())
        if not self.active:
            return float(x)
        t = torch.tensor([float(x)], dtype=torch.float64)
        return float(self.sum_(t)[0])

    def max(self, x: float) -> float:
        """Maximum of a float over processes."""
        if not self.active:
            return float(x)
        t = torch.tensor([float(x)], dtype=torch.float64)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.group)
        return float(t[0])


__all__ = ["Comm"]
