"""Baseline heads on frozen token features ``X (n, s, d)``: linear probe, MLP, Adam-trained attention.

Every head minimises a regularised empirical risk

    J(theta) = sum_i loss(f_theta(X_i), y_i) + (beta/2) ||theta||^2

(``reduction="sum"``, the convention of :mod:`dualattn.convex`; ``"mean"``
divides the loss term by ``n``) with ``loss`` either ``"cross_entropy"`` or
``"squared"`` (``1/2 ||f - onehot(y)||^2``): the same objective form as the
convex heads, so objective values can be compared.

* ``linear-probe``: logistic/ridge regression on pooled features ``[x_cls, mean_t x_t]``
  (full-batch L-BFGS, deterministic).
* ``mlp``: ``W2 relu(W1 p + b1) + b2`` on the same pooled features (Adam).
  Both take ``pool="flatten"`` to see every token (``p = vec(X)``, position-specific
  weights, like the MLP-Mixer heads) instead of ``[x_cls, mean_t x_t]``.
* ``softmax-attention``: one multi-head softmax self-attention layer,
  ``A_h = softmax(X Q_h (X K_h)^T / sqrt(r))``, ``f = mean_t (sum_h A_h X V_h)_t W_o`` (Adam).
* ``adam:<convex head>``: the nonconvex model of a :mod:`dualattn.convex` head
  (same architecture and weight decay as its convex program), trained by Adam
  from a random init (:func:`fit_nonconvex_counterpart`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

LOSSES = ("cross_entropy", "squared")


@dataclass
class HeadResult:
    """Outcome of fitting one head on one split."""

    head: str
    train_acc: float
    test_acc: float
    objective: float
    time_s: float
    params: int
    gap: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


POOLS = ("cls-mean", "flatten")


def pooled(X: torch.Tensor, pool: str = "cls-mean") -> torch.Tensor:
    """``"cls-mean"``: ``[x_cls, mean_t x_t]`` ``(n, 2d)``; ``"flatten"``: all tokens ``(n, s*d)``."""
    if pool == "cls-mean":
        return torch.cat([X[:, 0], X.mean(1)], dim=1)
    if pool == "flatten":
        return X.flatten(1)
    raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")


def _pooled_dim(d: int, s: int, pool: str) -> int:
    if pool not in POOLS:
        raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
    return 2 * d if pool == "cls-mean" else s * d


def risk(logits: torch.Tensor, y: torch.Tensor, loss: str, reduction: str = "sum") -> torch.Tensor:
    """Summed (or mean) loss: cross entropy, or ``1/2 ||logits - onehot(y)||^2`` for ``"squared"``."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
    if loss == "cross_entropy":
        return nn.functional.cross_entropy(logits, y, reduction=reduction)
    if loss == "squared":
        onehot = nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)
        per = 0.5 * ((logits - onehot) ** 2).sum(1)
        return per.sum() if reduction == "sum" else per.mean()
    raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")


def objective(model: nn.Module, X: torch.Tensor, y: torch.Tensor, loss: str, beta: float,
              reduction: str = "sum") -> float:
    """``J = risk + beta/2 * sum ||theta||^2`` over all trainable parameters."""
    with torch.no_grad():
        reg = sum((p ** 2).sum() for p in model.parameters() if p.requires_grad)
        return float(risk(model(X), y, loss, reduction) + 0.5 * beta * reg)


def _check(X: np.ndarray, y: np.ndarray, name: str = "X") -> tuple[torch.Tensor, torch.Tensor]:
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"{name}: expected token features (n, s, d), got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name}: contains NaN or inf")
    y = np.asarray(y)
    if y.shape != (X.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y: expected integer labels of shape ({X.shape[0]},), got {y.dtype} {y.shape}")
    return torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)


class PooledLinear(nn.Module):
    """``f(X) = W p(X) + b`` with ``p`` = :func:`pooled` (``[x_cls, mean_t x_t]`` or all tokens)."""

    def __init__(self, d: int, c: int, *, s: int = 1, pool: str = "cls-mean"):
        super().__init__()
        self.pool = pool
        self.fc = nn.Linear(_pooled_dim(d, s, pool), c)

    def forward(self, X):
        return self.fc(pooled(X, self.pool))


class PooledMLP(nn.Module):
    """``f(X) = W2 relu(W1 p(X) + b1) + b2`` with ``p`` = :func:`pooled`."""

    def __init__(self, d: int, c: int, hidden: int = 256, *, s: int = 1, pool: str = "cls-mean"):
        super().__init__()
        self.pool = pool
        self.net = nn.Sequential(nn.Linear(_pooled_dim(d, s, pool), hidden), nn.ReLU(), nn.Linear(hidden, c))

    def forward(self, X):
        return self.net(pooled(X, self.pool))


class SoftmaxAttentionHead(nn.Module):
    """One softmax self-attention layer + token mean + linear read-out.

    ``f(X) = mean_t ( sum_h softmax(X Q_h (X K_h)^T / sqrt(r)) X V_h )_t W_o``.
    """

    def __init__(self, d: int, c: int, heads: int = 4, r: int | None = None):
        super().__init__()
        self.h, self.r = heads, r or max(1, d // heads)
        self.q = nn.Linear(d, heads * self.r, bias=False)
        self.k = nn.Linear(d, heads * self.r, bias=False)
        self.v = nn.Linear(d, heads * self.r, bias=False)
        self.o = nn.Linear(heads * self.r, c)

    def forward(self, X, return_attention: bool = False):
        n, s, _ = X.shape
        q, k, v = (m(X).view(n, s, self.h, self.r).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.r), dim=-1)
        out = (a @ v).transpose(1, 2).reshape(n, s, -1).mean(1)
        return (self.o(out), a) if return_attention else self.o(out)


def fit_module(model: nn.Module, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, *,
               head: str, loss: str = "cross_entropy", beta: float = 1.0, epochs: int = 200,
               lr: float = 3e-3, batch_size: int = 128, seed: int = 0, optimizer: str = "adam",
               reduction: str = "sum", progress: Callable[[int, float], None] | None = None) -> HeadResult:
    """Minimise ``J(theta)`` for ``model`` by Adam (mini-batch, weight decay ``beta`` as an
    explicit ``beta/2 ||theta||^2`` term; a batch ``B`` uses the unbiased estimate
    ``n/|B| sum_B loss``) or by full-batch L-BFGS; return a :class:`HeadResult`."""
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")
    if beta < 0:
        raise ValueError(f"beta: must be >= 0, got {beta}")
    Xt, yt = _check(X, y)
    Xs, ys = _check(X_test, y_test, "X_test")
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]

    def full_objective():
        reg = sum((p ** 2).sum() for p in params)
        return risk(model(Xt), yt, loss, reduction) + 0.5 * beta * reg

    t0 = time.perf_counter()
    model.train()
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=epochs, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-7, tolerance_change=1e-10)

        def closure():
            opt.zero_grad()
            j = full_objective()
            j.backward()
            return j

        opt.step(closure)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        gen = torch.Generator().manual_seed(seed)
        n = len(yt)
        for epoch in range(epochs):
            for idx in torch.randperm(n, generator=gen).split(batch_size):
                opt.zero_grad()
                reg = sum((p ** 2).sum() for p in params)
                w = n / len(idx) if reduction == "sum" else 1.0
                (w * risk(model(Xt[idx]), yt[idx], loss, reduction) + 0.5 * beta * reg).backward()
                opt.step()
            sched.step()
            if progress is not None:
                progress(epoch, float(full_objective().detach()))
    else:
        raise ValueError(f"optimizer: expected 'adam' or 'lbfgs', got {optimizer!r}")
    elapsed = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        train_acc = float((model(Xt).argmax(1) == yt).float().mean())
        test_acc = float((model(Xs).argmax(1) == ys).float().mean())
    j = objective(model, Xt, yt, loss, beta, reduction)
    if not math.isfinite(j):
        raise FloatingPointError(f"head {head!r}: objective diverged (lr={lr}, beta={beta})")
    return HeadResult(head, train_acc, test_acc, j, elapsed, sum(p.numel() for p in params),
                      extra={"optimizer": optimizer, "epochs": epochs, "lr": lr, "beta": beta, "loss": loss,
                             "reduction": reduction})


BASELINES = ("linear-probe", "mlp", "softmax-attention")


def fit_baseline(head: str, X, y, X_test, y_test, *, loss: str = "cross_entropy", beta: float = 1.0,
                 seed: int = 0, epochs: int = 200, lr: float = 3e-3, hidden: int = 256, heads: int = 4,
                 batch_size: int = 128, reduction: str = "sum", num_classes: int | None = None,
                 pool: str = "cls-mean") -> HeadResult:
    """Fit baseline ``head`` in :data:`BASELINES` (``pool`` applies to the linear probe and MLP)."""
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"X: expected token features (n, s, d), got shape {X.shape}")
    s, d, c = X.shape[1], X.shape[-1], num_classes or int(max(np.max(y), np.max(y_test))) + 1
    torch.manual_seed(seed)
    if head == "linear-probe":
        return fit_module(PooledLinear(d, c, s=s, pool=pool), X, y, X_test, y_test, head=head, loss=loss, beta=beta,
                          seed=seed, epochs=500, optimizer="lbfgs", reduction=reduction)
    if head == "mlp":
        model: nn.Module = PooledMLP(d, c, hidden, s=s, pool=pool)
    elif head == "softmax-attention":
        model = SoftmaxAttentionHead(d, c, heads)
    else:
        raise ValueError(f"head: expected one of {BASELINES}, got {head!r}")
    return fit_module(model, X, y, X_test, y_test, head=head, loss=loss, beta=beta, seed=seed,
                      epochs=epochs, lr=lr, batch_size=batch_size, reduction=reduction)


def fit_nonconvex_counterpart(convex_head: str, X, y, X_test, y_test, *, m: int = 8,
                              head_options: dict | None = None, loss: str = "cross_entropy",
                              beta: float = 1.0, seed: int = 0, epochs: int = 200, lr: float = 3e-3,
                              batch_size: int = 128, init_scale: float = 0.1,
                              reduction: str = "sum", num_classes: int | None = None) -> HeadResult:
    """Train the nonconvex model of convex head ``convex_head`` (``m`` heads/neurons) by Adam.

    The architecture and penalty ``beta/2 sum ||W||^2`` are the head's own
    (``ConvexHead.init_nonconvex`` / ``nonconvex_module``), so the final
    objective is directly comparable with the convex optimum.
    """
    from dualattn.convex.heads import get_head

    X = np.asarray(X)
    d, c = X.shape[-1], num_classes or int(max(np.max(y), np.max(y_test))) + 1
    spec = get_head(convex_head, **{"seed": seed, **(head_options or {})})
    spec.setup(d, c, s=X.shape[1], dtype=torch.float32)
    weights = spec.init_nonconvex(m, generator=torch.Generator().manual_seed(seed), scale=init_scale)
    model = spec.nonconvex_module(weights)
    res = fit_module(model, X, y, X_test, y_test, head=f"adam:{convex_head}", loss=loss, beta=beta,
                     seed=seed, epochs=epochs, lr=lr, batch_size=batch_size, reduction=reduction)
    res.extra["m"] = m
    return res
