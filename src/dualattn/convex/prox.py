"""Proximal operators and norms for sums of nuclear norms over a block stack.

``Z`` is a stack ``(P, p, q)`` of blocks; ``R(Z) = sum_g ||Z_g||_*``.

* prox:      ``prox_{tR}(Z)_g = U_g diag(max(s_g - t, 0)) V_g^T``  (SVD ``Z_g = U_g diag(s_g) V_g^T``)
* dual norm: ``R°(V) = max_g ||V_g||_2`` (spectral norm)
* group norm (``q == 1`` or ``p == 1``): the same formulas reduce to
  ``prox(z)_g = max(1 - t / ||z_g||_2, 0) z_g`` (block soft-thresholding), done in closed form.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_stack(Z: Tensor, name: str = "Z") -> None:
    if not isinstance(Z, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (P, p, q), got {type(Z).__name__}")
    if Z.ndim != 3:
        raise ValueError(f"{name} must have shape (P, p, q), got {tuple(Z.shape)}")


def _check_t(t: float) -> float:
    t = float(t)
    if not (t >= 0.0) or t != t or t == float("inf"):
        raise ValueError(f"t must be a finite number >= 0, got {t}")
    return t


def nuclear_norm(Z: Tensor) -> Tensor:
    """``sum_g ||Z_g||_*`` (sum of singular values of every block)."""
    _check_stack(Z)
    if min(Z.shape[1], Z.shape[2]) == 1:
        return torch.linalg.vector_norm(Z.flatten(1), dim=1).sum()
    return torch.linalg.svdvals(Z).sum()


def spectral_norm(V: Tensor) -> Tensor:
    """``max_g ||V_g||_2``: the dual norm of :func:`nuclear_norm`."""
    _check_stack(V, "V")
    if min(V.shape[1], V.shape[2]) == 1:
        return torch.linalg.vector_norm(V.flatten(1), dim=1).max()
    return torch.linalg.svdvals(V)[:, 0].max()


def group_prox(Z: Tensor, t: float, *, return_penalty: bool = False):
    """Block soft-thresholding ``max(1 - t/||z_g||, 0) z_g`` (prox of ``t sum_g ||z_g||_2``)."""
    _check_stack(Z)
    t = _check_t(t)
    norms = torch.linalg.vector_norm(Z.flatten(1), dim=1)
    scale = torch.clamp(1.0 - t / norms.clamp_min(torch.finfo(Z.dtype).tiny), min=0.0)
    U = Z * scale[:, None, None]
    if return_penalty:
        return U, (norms * scale).sum()
    return U


def nuclear_prox(Z: Tensor, t: float, *, return_penalty: bool = False):
    """Singular-value soft-thresholding, batched over blocks (prox of ``t sum_g ||Z_g||_*``).

    With ``return_penalty=True`` returns ``(U, sum_g ||U_g||_*)`` from the same SVD.
    """
    _check_stack(Z)
    t = _check_t(t)
    if min(Z.shape[1], Z.shape[2]) == 1:
        return group_prox(Z, t, return_penalty=return_penalty)
    U, S, Vh = torch.linalg.svd(Z, full_matrices=False)
    S = torch.clamp(S - t, min=0.0)
    out = (U * S[:, None, :]) @ Vh
    if return_penalty:
        return out, S.sum()
    return out
