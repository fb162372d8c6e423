"""Chunked (streaming) evaluation of a head's linear map ``A_X`` and its adjoint.

Per-sample statistics (``head.features``) are computed chunk by chunk once and
cached when they fit in ``max_cache_bytes``; otherwise only the raw chunks of
``X`` are kept and the features are recomputed on every pass.  ``A Z`` is the
concatenation of the chunks' outputs; ``A^* V = sum_chunks A_chunk^* V_chunk``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dualattn.convex.heads.base import ConvexHead


class ChunkedOperator:
    """``A_X`` of ``head`` on ``X (n, s, d)`` evaluated ``chunk_size`` samples at a time."""

    def __init__(
        self,
        head: ConvexHead,
        X: Tensor,
        *,
        chunk_size: int = 4096,
        max_cache_bytes: float = 2 * 2**30,
    ) -> None:
        if not (isinstance(chunk_size, int) and chunk_size > 0):
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        head.check_X(X)
        self.head = head
        self.n = int(X.shape[0])
        self.c = int(head.c)
        self.dtype = head.dtype
        self.device = head.device
        self.bounds = [(i, min(i + chunk_size, self.n)) for i in range(0, self.n, chunk_size)]
        first = head.features(X[self.bounds[0][0] : self.bounds[0][1]])
        per_sample = sum(v.element_size() * v[0].numel() for v in first.values())
        self.cached = per_sample * self.n <= max_cache_bytes
        if self.cached:
            self._feats = [first] + [head.features(X[a:b]) for a, b in self.bounds[1:]]
        else:
            self._X = X
        self.feature_bytes = per_sample * self.n

    def chunks(self):
        """Yield ``(start, stop, features)`` for every chunk."""
        for k, (a, b) in enumerate(self.bounds):
            feats = self._feats[k] if self.cached else self.head.features(self._X[a:b])
            yield a, b, feats

    def full_features(self) -> dict[str, Tensor]:
        """All features concatenated (small problems / CVXPY only)."""
        parts = [f for _, _, f in self.chunks()]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def forward(self, Z: Tensor) -> Tensor:
        """``A Z``: pooled outputs ``(n, c)``."""
        return torch.cat([self.head.apply(Z, f) for _, _, f in self.chunks()])

    def adjoint(self, V: Tensor) -> Tensor:
        """``A^* V`` for ``V (n, c)``."""
        out = None
        for a, b, f in self.chunks():
            g = self.head.adjoint(V[a:b], f)
            out = g if out is None else out + g
        return out

    def norm_estimate(self, iters: int = 15, seed: int = 0) -> float:
        """Power-iteration estimate of ``||A||_2^2`` (largest eigenvalue of ``A^* A``)."""
        gen = torch.Generator().manual_seed(seed)
        v = torch.randn(self.head.variable_shape(), generator=gen, dtype=self.dtype).to(self.device)
        v = v / v.norm()
        lam = 0.0
        for _ in range(iters):
            w = self.adjoint(self.forward(v))
            lam = float(w.norm())
            if lam == 0.0:
                return 0.0
            v = w / lam
        return lam
