"""Losses on pooled outputs, with gradients and Fenchel conjugates (for duality gaps).

Both losses are sums over samples (Sahiner et al.'s convention):

* squared:        ``F(U) = 1/2 sum_i ||U_i - Y_i||^2``,
                  ``F*(lam) = 1/2 ||lam||^2 + <lam, Y>``;
* cross-entropy:  ``F(U) = sum_i logsumexp(U_i) - U_i[y_i]``,
                  ``F*(lam) = sum_i sum_c q_ic log q_ic`` with ``q_i = lam_i + e_{y_i}``,
                  finite only when every ``q_i`` lies in the probability simplex.

For ``min_Z F(A Z) + beta R(Z)`` the dual is ``max_lam -F*(lam)`` s.t.
``R°(A^* lam) <= beta``; :meth:`Loss.dual_value` evaluates it on ``theta * lam``
with the best ``theta`` in ``[0, theta_max]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Loss:
    """A smooth convex loss ``F`` on ``(n, c)`` outputs; ``targets`` are prepared by :meth:`targets`."""

    name = "base"
    #: Lipschitz constant of the gradient of one sample's loss
    smoothness = 1.0

    def targets(self, y: Tensor, n: int, num_classes: int | None) -> tuple[Tensor, int]:
        raise NotImplementedError

    def value(self, U: Tensor, Y: Tensor) -> Tensor:
        raise NotImplementedError

    def value_grad(self, U: Tensor, Y: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def dual_value(self, lam: Tensor, Y: Tensor, theta_max: float) -> tuple[Tensor, float]:
        raise NotImplementedError


def _check_y_shape(y: Tensor, n: int) -> None:
    if y.shape[0] != n:
        raise ValueError(f"y must have n={n} rows (one per sample of X), got shape {tuple(y.shape)}")


class SquaredLoss(Loss):
    """``1/2 sum_i ||U_i - Y_i||^2``; integer labels are one-hot encoded."""

    name = "squared"
    smoothness = 1.0

    def targets(self, y: Tensor, n: int, num_classes: int | None) -> tuple[Tensor, int]:
        _check_y_shape(y, n)
        if not torch.is_floating_point(y):
            if y.ndim != 1:
                raise ValueError(f"integer labels y must have shape (n,), got {tuple(y.shape)}")
            c = _num_classes(y, num_classes)
            return torch.nn.functional.one_hot(y.long(), c).to(torch.float64), c
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim != 2:
            raise ValueError(f"float targets y must have shape (n,) or (n, c), got {tuple(y.shape)}")
        if not torch.isfinite(y).all():
            raise ValueError("y contains NaN or inf")
        return y, int(y.shape[1])

    def value(self, U: Tensor, Y: Tensor) -> Tensor:
        return 0.5 * ((U - Y) ** 2).sum()

    def value_grad(self, U: Tensor, Y: Tensor) -> tuple[Tensor, Tensor]:
        R = U - Y
        return 0.5 * (R**2).sum(), R

    def dual_value(self, lam: Tensor, Y: Tensor, theta_max: float) -> tuple[Tensor, float]:
        """``max_{0<=theta<=theta_max} -theta^2/2 ||lam||^2 - theta <lam, Y>`` (closed form)."""
        a = (lam**2).sum()
        b = (lam * Y).sum()
        theta = 0.0 if a <= 0 else float(min(max(-b / a, 0.0), theta_max))
        return -0.5 * theta**2 * a - theta * b, theta


def _num_classes(y: Tensor, num_classes: int | None) -> int:
    if y.numel() == 0:
        raise ValueError("y is empty")
    lo, hi = int(y.min()), int(y.max())
    c = hi + 1 if num_classes is None else int(num_classes)
    if lo < 0 or hi >= c:
        raise ValueError(f"labels y must lie in [0, {c}), got values in [{lo}, {hi}]")
    if num_classes is None:
        present = torch.unique(y)
        if present.numel() < c:
            missing = sorted(set(range(c)) - set(present.tolist()))
            shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            raise ValueError(
                f"labels y take {present.numel()} distinct values in [0, {hi}] but classes {shown} never occur; "
                f"pass num_classes={c} if they are real classes absent from this data, or remap the labels to "
                f"0..{present.numel() - 1} (e.g. classes, y = np.unique(y, return_inverse=True))")
    if c < 2 and num_classes is not None:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return max(c, 2)


class CrossEntropyLoss(Loss):
    """``sum_i logsumexp(U_i) - U_i[y_i]`` for integer labels ``y in [0, c)``."""

    name = "cross_entropy"
    smoothness = 0.5  # ||diag(p) - p p^T||_2 <= 1/2

    def targets(self, y: Tensor, n: int, num_classes: int | None) -> tuple[Tensor, int]:
        _check_y_shape(y, n)
        if torch.is_floating_point(y) or y.dtype == torch.bool:
            raise TypeError(f"cross_entropy needs integer class labels y of shape (n,), got dtype {y.dtype}")
        if y.ndim != 1:
            raise ValueError(f"labels y must have shape (n,), got {tuple(y.shape)}")
        c = _num_classes(y, num_classes)
        return y.long(), c

    def value(self, U: Tensor, Y: Tensor) -> Tensor:
        return (torch.logsumexp(U, dim=1) - U.gather(1, Y[:, None]).squeeze(1)).sum()

    def value_grad(self, U: Tensor, Y: Tensor) -> tuple[Tensor, Tensor]:
        lse = torch.logsumexp(U, dim=1)
        val = (lse - U.gather(1, Y[:, None]).squeeze(1)).sum()
        G = torch.exp(U - lse[:, None])
        G[torch.arange(U.shape[0], device=U.device), Y] -= 1.0
        return val, G

    def dual_value(self, lam: Tensor, Y: Tensor, theta_max: float) -> tuple[Tensor, float]:
        """``-F*(theta lam)`` = entropy of ``q = theta lam + e_y`` with ``theta = min(theta_max, 1)``.

        ``lam = softmax(U) - e_y`` so ``q = theta p + (1 - theta) e_y`` stays in the simplex.
        """
        theta = float(min(theta_max, 1.0))
        q = theta * lam
        q[torch.arange(lam.shape[0], device=lam.device), Y] += 1.0
        q = q.clamp_min(0.0)
        return -torch.special.xlogy(q, q).sum(), theta


LOSSES = {"squared": SquaredLoss, "cross_entropy": CrossEntropyLoss, "ce": CrossEntropyLoss}


def get_loss(loss: str | Loss) -> Loss:
    """Loss by name: ``"squared"`` or ``"cross_entropy"`` (alias ``"ce"``)."""
    if isinstance(loss, Loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}")
    return LOSSES[loss]()


def check_beta(beta) -> float:
    """``beta`` must be a finite number > 0."""
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise TypeError(f"beta must be a positive number, got {beta!r}") from None
    if not (b > 0.0) or math.isinf(b):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return b
