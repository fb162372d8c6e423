"""Largest singular values of block operators from matrix-vector products (Lanczos), with safe bounds.

For ``M = (M_1, ..., M_P)``, ``M_g in R^{p x q}``, available only through products
``W -> M_g W`` and ``U -> M_g^T U`` (e.g. ``M = A_X^*(lam)``, never formed), we need

* the top singular pairs (rank growth of the factorised solver), and
* an **upper** bound ``rho >= max_g ||M_g||_2``: the duality-gap certificate scales
  the dual point by ``theta = beta / rho``, and an estimate below the true norm
  would make the scaled point infeasible and the "lower bound" invalid.

Lanczos on the PSD matrix ``H_g = M_g^T M_g`` (or ``M_g M_g^T``, the smaller side,
dimension ``N``) with full reorthogonalisation gives Ritz values
``theta_k <= lambda_max(H_g) = ||M_g||_2^2``: a *lower* estimate.  Two ways to turn
it into an upper bound (:func:`spectral_norm_bound`):

* **exact** (deterministic): if ``k >= N`` the Krylov space is all of ``R^N`` (a
  breakdown restarts with a fresh vector orthogonal to the basis), so ``theta``
  *is* ``lambda_max`` (up to rounding, covered by a relative slack of
  ``1e3 * eps * sqrt(N)``).  When ``M`` fits in ``dense_bytes`` it is formed from ``N``
  products with identity columns (batched GEMMs) and its norm computed by a dense eigensolver.
* **probabilistic** (Kuczyński & Woźniakowski, SIAM J. Matrix Anal. Appl. 13(4),
  1992, the Lanczos estimate; for a PSD matrix by continuity from PD): for a PSD ``H`` of size ``N`` and a start vector uniform on the
  sphere, ``k`` Lanczos steps satisfy
  ``P(theta_k < (1 - eps) lambda_max) <= 1.648 sqrt(N) exp(-sqrt(eps) (2k - 1))``.
  With ``eps = (log(1.648 sqrt(N) P / delta) / (2k - 1))^2`` the bound
  ``||M_g||_2 <= sqrt(theta_k / (1 - eps))`` holds for all ``P`` blocks at once
  with probability ``>= 1 - delta`` (union bound).  This bound does not depend on
  the spectrum (no gap assumption); ``steps_for`` picks ``k`` for a target ``eps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: ``1.648 sqrt(N) exp(-sqrt(eps)(2k-1))``: the Kuczynski-Wozniakowski constant
KW_CONST = 1.648


def kw_epsilon(N: int, k: int, delta: float) -> float:
    """Relative error ``eps`` with ``P(theta_k < (1 - eps) lambda_max) <= delta`` after ``k`` steps (0 if ``k >= N``)."""
    if k >= N:
        return 0.0
    if k < 1 or not (0 < delta < 1):
        raise ValueError(f"need k >= 1 and 0 < delta < 1, got k={k}, delta={delta}")
    return min((math.log(KW_CONST * math.sqrt(N) / delta) / (2 * k - 1)) ** 2, 1.0)


def steps_for(N: int, eps: float, delta: float) -> int:
    """Smallest ``k`` with ``kw_epsilon(N, k, delta) <= eps`` (at most ``N``: then the bound is exact)."""
    if not (0 < eps < 1):
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    k = math.ceil((math.log(KW_CONST * math.sqrt(N) / delta) / math.sqrt(eps) + 1) / 2)
    return int(min(max(k, 2), N))


def lanczos(apply_H: Callable[[Tensor], Tensor], P: int, N: int, k: int, *, dtype=torch.float64,
            device="cpu", seed: int = 0, num_vectors: int = 1, start: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
    """``k`` Lanczos steps on ``P`` PSD operators at once (``apply_H: (P, N) -> (P, N)``).

    Full reorthogonalisation (twice); a breakdown (``beta_j ~ 0``: invariant
    subspace) continues with a random vector orthogonal to the basis, so ``k = N``
    steps span ``R^N``.  The start vector is Gaussian from ``seed`` (uniform on the
    sphere after normalisation; the same on every process), or ``start (P, N)`` (a warm start,
    e.g. the previous top Ritz vector: the top pair then converges in far fewer steps; never
    used for the probabilistic bound, which needs a random start).  Returns the top
    ``num_vectors`` Ritz values ``theta (P, m)`` (descending), Ritz vectors
    ``(P, m, N)`` and the number of steps done.
    """
    k = int(min(max(k, 1), N))
    gen = torch.Generator().manual_seed(seed)

    def rand() -> Tensor:
        return torch.randn(P, N, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    Q = torch.zeros(P, k, N, dtype=dtype, device=device)
    alpha = torch.zeros(P, k, dtype=dtype, device=device)
    beta = torch.zeros(P, k, dtype=dtype, device=device)
    q = rand()
    if start is not None:
        if tuple(start.shape) != (P, N):
            raise ValueError(f"start must have shape (P={P}, N={N}), got {tuple(start.shape)}")
        s0 = start.to(device=device, dtype=dtype)
        n0 = s0.norm(dim=1, keepdim=True)  # a zero row keeps its random start
        q = torch.where(n0 > 0, s0 / n0.clamp_min(torch.finfo(dtype).tiny) + 1e-3 * q / q.norm(dim=1, keepdim=True), q)
    q = q / q.norm(dim=1, keepdim=True)
    scale = torch.zeros(P, dtype=dtype, device=device)
    for j in range(k):
        Q[:, j] = q
        w = apply_H(q)
        alpha[:, j] = (q * w).sum(dim=1)
        scale = torch.maximum(scale, w.norm(dim=1))
        for _ in range(2):  # full reorthogonalisation against Q[:, :j+1]
            w = w - torch.einsum("pj,pjn->pn", torch.einsum("pjn,pn->pj", Q[:, : j + 1], w), Q[:, : j + 1])
        if j == k - 1:
            break
        b = w.norm(dim=1)
        broke = b <= 1e-12 * scale.clamp_min(torch.finfo(dtype).tiny)
        beta[:, j] = torch.where(broke, torch.zeros_like(b), b)
        q = w / b.clamp_min(torch.finfo(dtype).tiny)[:, None]
        if broke.any():  # restart the broken blocks with a random vector orthogonal to the basis
            r = rand()
            for _ in range(2):
                r = r - torch.einsum("pj,pjn->pn", torch.einsum("pjn,pn->pj", Q[:, : j + 1], r), Q[:, : j + 1])
            r = r / r.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
            q = torch.where(broke[:, None], r, q)
    steps = j + 1
    T = torch.diag_embed(alpha[:, :steps]) + torch.diag_embed(beta[:, : steps - 1], 1) \
        + torch.diag_embed(beta[:, : steps - 1], -1)
    evals, evecs = torch.linalg.eigh(T)
    m = min(num_vectors, steps)
    theta = evals.flip(1)[:, :m].clamp_min(0.0)
    Y = evecs.flip(2)[:, :, :m]  # (P, steps, m)
    X = torch.einsum("pjm,pjn->pmn", Y, Q[:, :steps])
    return theta, X, steps


@dataclass
class NormBound:
    """Per-block spectral norms of ``M``: ``estimate <= ||M_g||_2 <= bound`` (the bound with probability
    ``>= 1 - delta``; deterministic when ``method`` is ``"dense"`` or ``"krylov-full"``)."""

    estimate: Tensor
    bound: Tensor
    method: str
    steps: int
    eps: float
    delta: float

    @property
    def deterministic(self) -> bool:
        return self.method in ("dense", "krylov-full")


class BlockOperator:
    """``M (P, p, q)`` through ``matmul(W (P, q, k)) -> (P, p, k)`` and ``rmatmul(U (P, p, k)) -> (P, q, k)``."""

    def __init__(self, shape: tuple[int, int, int], matmul, rmatmul, *, dtype=torch.float64, device="cpu"):
        self.P, self.p, self.q = (int(x) for x in shape)
        self.matmul, self.rmatmul = matmul, rmatmul
        self.dtype, self.device = dtype, torch.device(device)

    @property
    def small_side(self) -> int:
        return min(self.p, self.q)

    def gram(self, x: Tensor) -> Tensor:
        """``H x`` for ``x (P, N)``: ``M^T M x`` if ``q <= p`` else ``M M^T x``."""
        if self.q <= self.p:
            return self.rmatmul(self.matmul(x[:, :, None]))[:, :, 0]
        return self.matmul(self.rmatmul(x[:, :, None]))[:, :, 0]

    def dense(self, batch: int = 256) -> Tensor:
        """``M`` formed from products with identity columns of the smaller side, ``batch`` at a time."""
        N = self.small_side
        cols = []
        for a in range(0, N, batch):
            b = min(a + batch, N)
            E = torch.zeros(self.P, N, b - a, dtype=self.dtype, device=self.device)
            E[:, torch.arange(a, b), torch.arange(b - a)] = 1.0
            cols.append(self.matmul(E) if self.q <= self.p else self.rmatmul(E))
        M = torch.cat(cols, dim=2)
        return M if self.q <= self.p else M.transpose(1, 2)

    def top_pairs(self, k: int, num: int = 1, *, seed: int = 0,
                  start: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Estimates of the top ``num`` singular triples per block by ``k`` Lanczos steps:
        ``sigma (P, m)``, ``U (P, p, m)``, ``V (P, q, m)`` (``U = M V / sigma``).

        ``start = (u (P, p), v (P, q))`` warm-starts Lanczos (e.g. the previous top pair of a
        nearby operator); these are estimates only, never the certificate's bound."""
        x0 = None if start is None else (start[1] if self.q <= self.p else start[0])
        theta, X, _ = lanczos(self.gram, self.P, self.small_side, k, dtype=self.dtype, device=self.device,
                              seed=seed, num_vectors=num, start=x0)
        return self._pairs(theta.sqrt(), X)

    def _pairs(self, sigma: Tensor, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        X = X.transpose(1, 2)  # (P, N, m)
        if self.q <= self.p:
            V = X
            U = self.matmul(V)
        else:
            U = X
            V = self.rmatmul(U)
        other = U if self.q <= self.p else V
        nrm = other.norm(dim=1)  # (P, m) = ||M v|| or ||M^T u||
        other = other / nrm.clamp_min(torch.finfo(self.dtype).tiny)[:, None, :]
        if self.q <= self.p:
            U = other
        else:
            V = other
        return nrm, U, V

    def norm_bound(self, *, eps: float = 2.5e-4, delta: float = 1e-6, seed: int = 0,
                   dense_bytes: float = 2**28, max_steps: int | None = None) -> NormBound:
        """Upper bound on ``max_g ||M_g||_2`` (see the module docstring for why it is valid).

        Uses the dense matrix (exact) if ``P p q`` floats fit in ``dense_bytes``; else
        ``k = steps_for(N, eps, delta / P)`` Lanczos
        steps (``max_steps`` caps ``k``; ``eps`` then grows accordingly).
        """
        N = self.small_side
        k = steps_for(N, eps, delta / self.P) if N > 1 else 1
        if max_steps is not None:
            k = min(k, int(max_steps))
        fp_slack = 1e3 * torch.finfo(self.dtype).eps * math.sqrt(N)
        if self.P * self.p * self.q * torch.finfo(self.dtype).bits / 8 <= dense_bytes:
            M = self.dense()
            H = M.transpose(1, 2) @ M if self.q <= self.p else M @ M.transpose(1, 2)
            lam = torch.linalg.eigvalsh(H)[:, -1].clamp_min(0.0)
            est = lam.sqrt()
            return NormBound(est, est * (1 + fp_slack), "dense", N, 0.0, 0.0)
        theta, _, steps = lanczos(self.gram, self.P, N, k, dtype=self.dtype, device=self.device, seed=seed)
        est = theta[:, 0].sqrt()
        if steps >= N:
            return NormBound(est, est * (1 + fp_slack), "krylov-full", steps, 0.0, 0.0)
        e = kw_epsilon(N, steps, delta / self.P)
        if e >= 1.0:
            return NormBound(est, torch.full_like(est, math.inf), "lanczos-kw", steps, e, delta)
        return NormBound(est, est / math.sqrt(1.0 - e) * (1 + fp_slack), "lanczos-kw", steps, e, delta)


__all__ = ["BlockOperator", "NormBound", "kw_epsilon", "lanczos", "steps_for"]
