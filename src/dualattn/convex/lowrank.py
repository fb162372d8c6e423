"""Block low-rank matrices ``Z_g = A_g B_g^T`` handled without forming ``Z``.

``A (P, p, r)``, ``B (P, q, r)``.  Thin QR of both factors, ``A_g = Q_a R_a`` and
``B_g = Q_b R_b``, reduces everything to the small core ``C_g = R_a R_b^T``
(``r x r``): with ``C_g = U S V^T``,

    Z_g = (Q_a U) S (Q_b V)^T        (an SVD of Z_g),   ||Z_g||_* = sum(S).

Cost ``O(P (p + q) r^2)``; memory ``O(P (p + q) r)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check(A: Tensor, B: Tensor) -> None:
    if A.ndim != 3 or B.ndim != 3 or A.shape[0] != B.shape[0] or A.shape[2] != B.shape[2]:
        raise ValueError(f"factors must be A (P, p, r) and B (P, q, r), got {tuple(A.shape)} and {tuple(B.shape)}")


def core_svd(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``Q_a (P, p, k)``, ``U (P, k, k')``, ``S (P, k')``, ``V (P, k'', k')``, ``Q_b (P, q, k'')`` of ``Z = A B^T``."""
    _check(A, B)
    Qa, Ra = torch.linalg.qr(A)
    Qb, Rb = torch.linalg.qr(B)
    U, S, Vh = torch.linalg.svd(Ra @ Rb.transpose(1, 2), full_matrices=False)
    return Qa, U, S, Vh.transpose(1, 2), Qb


def balanced_svd(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SVD of every block of ``Z = A B^T``: ``U (P, p, k)``, ``S (P, k)`` descending, ``V (P, q, k)``."""
    Qa, U, S, V, Qb = core_svd(A, B)
    return Qa @ U, S, Qb @ V


def nuclear_norm(A: Tensor, B: Tensor) -> Tensor:
    """``sum_g ||A_g B_g^T||_*`` (exact, from the QR cores)."""
    if A.shape[2] == 0:
        return torch.zeros((), dtype=A.dtype, device=A.device)
    return core_svd(A, B)[2].sum()


def compress(A: Tensor, B: Tensor, *, rtol: float = 1e-10, min_rank: int = 1) -> tuple[Tensor, Tensor]:
    """Balanced factors of the same ``Z`` with the smallest common rank: ``A_g = U sqrt(S)``, ``B_g = V sqrt(S)``.

    Singular values ``<= rtol * max`` are dropped (``Z`` changes by at most that);
    after balancing ``1/2 (||A||_F^2 + ||B||_F^2) = sum_g ||Z_g||_*`` exactly.
    """
    return truncated_balanced(*balanced_svd(A, B), rtol=rtol, min_rank=min_rank)


def truncated_balanced(U: Tensor, S: Tensor, V: Tensor, *, rtol: float = 1e-10,
                       min_rank: int = 1) -> tuple[Tensor, Tensor]:
    """``(U sqrt(S), V sqrt(S))`` from a batched SVD ``Z_g = U_g diag(S_g) V_g^T`` (``S`` descending),
    singular values ``<= rtol * max`` over all blocks zeroed; the common rank is the largest block
    rank kept (at least ``min_rank``, at most ``S.shape[1]``)."""
    smax = float(S.max()) if S.numel() else 0.0
    keep = S > rtol * smax if smax > 0 else torch.zeros_like(S, dtype=torch.bool)
    r = max(int(keep.sum(dim=1).max()) if keep.numel() else 0, min_rank)
    r = min(r, S.shape[1])
    root = (S[:, :r] * keep[:, :r]).sqrt()
    return U[:, :, :r] * root[:, None, :], V[:, :, :r] * root[:, None, :]


def dense(A: Tensor, B: Tensor) -> Tensor:
    """``Z = A B^T`` (small problems only)."""
    return A @ B.transpose(1, 2)


__all__ = ["balanced_svd", "compress", "core_svd", "dense", "nuclear_norm", "truncated_balanced"]
