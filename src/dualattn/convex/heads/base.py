"""The convex-head protocol shared by every head type and every solver.

A convex head is the program

    min_Z  L(A_X(Z), y) + beta * R(Z),        Z in R^{P x p x q},

where ``A_X`` is a LINEAR map from the lifted variable ``Z`` (a stack of ``P``
blocks of size ``p x q``) to the globally average-pooled outputs ``(n, c)``,
``L`` is the loss summed over samples and ``R(Z) = sum_g ||Z_g||_*`` (a sum of
nuclear norms; for ``min(p, q) == 1`` this is the group-lasso norm).

The solvers (FISTA, CVXPY) only use this protocol, so a new head type works with
them as soon as it implements :meth:`ConvexHead.features`,
:meth:`ConvexHead.apply`, :meth:`ConvexHead.unlift` and
:meth:`ConvexHead.nonconvex_forward`.  Everything else (adjoint, prox, dual
norm, recovery, CVXPY model, nonconvex ``nn.Module``) has a generic default
valid for sums of nuclear norms; override it for speed or for another ``R``.

Recovery (the nonconvex weights) follows from the variational form of the
nuclear norm::

    ||Z_g||_* = min { 1/2 sum_j (||a_j||^2 + ||b_j||^2) : Z_g = sum_j a_j b_j^T },

attained by the balanced SVD factors ``a_j = sqrt(s_j) u_j``,
``b_j = sqrt(s_j) v_j``; :meth:`ConvexHead.unlift` turns each pair
``(a_j, b_j)`` of block ``g`` into the weights of one nonconvex head/neuron.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from dualattn.convex import prox as _prox

Weights = dict[str, Tensor]


class ConvexHead(abc.ABC):
    """Base class of a convex head (see module docstring for the program).

    Life cycle: construct with head options, then :meth:`setup` with the data
    dimensions ``d`` (token features) and ``c`` (outputs); ``setup`` samples any
    random gate matrices (seeded) so that the program is fixed afterwards.
    """

    #: registry name, e.g. ``"linear"``
    name: ClassVar[str] = "base"
    #: names of the trainable nonconvex weights (weight decay applies to them)
    trainable: ClassVar[tuple[str, ...]] = ("W1", "W2")

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = int(seed)
        self.d: int | None = None
        self.c: int | None = None
        self.dtype: torch.dtype = torch.float64
        self.device: torch.device = torch.device("cpu")
        self.s: int | None = None

    # ------------------------------------------------------------------ setup
    def setup(
        self,
        d: int,
        c: int,
        *,
        s: int | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> ConvexHead:
        """Fix the dimensions (``d`` features, ``c`` outputs, optional ``s`` tokens).

        Calling it again with the same ``d, c, s`` keeps the sampled gates
        (only dtype/device move), so a fitted head predicts consistently.
        """
        if not (isinstance(d, int) and d > 0):
            raise ValueError(f"d must be a positive int, got {d!r}")
        if not (isinstance(c, int) and c > 0):
            raise ValueError(f"c must be a positive int, got {c!r}")
        keep = self.d == d and self.c == c and (s is None or s == getattr(self, "s", None))
        self.dtype = dtype
        self.device = torch.device(device)
        if not keep:
            old = (self.d, self.c, self.s)
            self.d, self.c, self.s = d, c, s
            try:
                self._setup(torch.Generator().manual_seed(self.seed))
            except Exception:
                self.d, self.c, self.s = old  # leave the head as it was
                raise
        self._move()
        return self

    def _setup(self, generator: torch.Generator) -> None:
        """Hook: sample gates etc. after ``self.d``, ``self.c`` are set (CPU generator)."""

    def _move(self) -> None:
        """Hook: move stored tensors (gates) to ``self.device`` / ``self.dtype``."""

    def _require_setup(self) -> None:
        if self.d is None or self.c is None:
            raise RuntimeError(f"head {self.name!r}: call setup(d, c) first")

    def check_X(self, X: Tensor) -> None:
        """Raise a clear error unless ``X`` is a finite float ``(n, s, d)`` tensor."""
        self._require_setup()
        if not isinstance(X, Tensor):
            raise TypeError(f"X must be a torch.Tensor of shape (n, s, d), got {type(X).__name__}")
        if X.ndim != 3 or X.shape[-1] != self.d:
            raise ValueError(f"X must have shape (n, s, d={self.d}), got {tuple(X.shape)}")
        if self.s is not None and X.shape[1] != self.s:
            raise ValueError(f"X must have s={self.s} tokens for head {self.name!r}, got {X.shape[1]}")

    def get_config(self) -> dict[str, Any]:
        """Constructor options (for saving / printing)."""
        return {"seed": self.seed}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({opts})"

    # ----------------------------------------------------- the linear operator
    @abc.abstractmethod
    def variable_shape(self) -> tuple[int, int, int]:
        """Shape ``(P, p, q)`` of the lifted variable ``Z``."""

    @abc.abstractmethod
    def features(self, X: Tensor) -> dict[str, Tensor]:
        """Per-sample statistics of ``X (n, s, d)`` that ``apply`` needs.

        Every value has leading dimension ``n`` so the solvers can slice them
        into chunks (streaming); computed once and cached by the solver.
        """

    @abc.abstractmethod
    def apply(self, Z: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``A_X(Z)``: pooled outputs ``(n, c)``; must be linear in ``Z``."""

    def adjoint(self, V: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``A_X^*(V)`` for ``V (n, c)``: the gradient of ``<V, A_X(Z)>`` in ``Z``.

        Default: reverse-mode autograd through :meth:`apply` (exact since it is
        linear); override with an explicit contraction for speed.
        """
        shape = self.variable_shape()
        Z = torch.zeros(shape, dtype=V.dtype, device=V.device, requires_grad=True)
        with torch.enable_grad():
            out = self.apply(Z, feats)
            (g,) = torch.autograd.grad(out, Z, grad_outputs=V)
        return g

    def forward(self, Z: Tensor, X: Tensor) -> Tensor:
        """Pooled outputs ``(n, c)`` of the convex model ``Z`` on raw inputs ``X``."""
        self.check_X(X)
        return self.apply(Z, self.features(X))

    # ------------------------------------------- factored (matrix-free) protocol
    # Used by the Burer-Monteiro solver (:mod:`dualattn.convex.solvers.factorised`):
    # ``Z_g = A_g B_g^T`` with ``A (P, p, r)``, ``B (P, q, r)`` (zero columns pad blocks
    # of lower rank).  The defaults form ``Z`` (fine for heads whose ``Z`` is small:
    # mixer-linear, FNO); heads with large ``p = d^2`` override them.
    def factored_features(self, X: Tensor) -> dict[str, Tensor]:
        """Per-sample statistics for :meth:`factored_apply` (default: :meth:`features`)."""
        return self.features(X)

    def factored_bytes_per_sample(self, s: int, r: int) -> int:
        """Rough bytes of per-sample intermediates of :meth:`factored_apply` at rank ``r`` (sets chunk sizes)."""
        P, p, q = self.variable_shape()
        return P * s * max(s, self.d) * r * (torch.finfo(self.dtype).bits // 8)

    def factored_cost_ratio(self, s: int, r: int) -> float | None:
        """Flops of :meth:`factored_apply` at rank ``r`` over those of the dense :meth:`apply`, per
        sample with ``s`` tokens (``None``: not known).  ``choose_solver`` keeps the dense solver for a
        small ``Z`` when this is ``>= 1`` (the factored forward would be the slower one)."""
        return None

    def factored_apply(self, A: Tensor, B: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``A_X(Z)`` for ``Z_g = A_g B_g^T`` (differentiable; default forms ``Z``)."""
        return self.apply(A @ B.transpose(1, 2), feats)

    def factored_vjp(self, A: Tensor, B: Tensor, feats: dict[str, Tensor]):
        """``out = A_X(A B^T)`` and ``vjp(lam) -> (M B, M^T A)`` with ``M = A_X^*(lam)`` (the gradients
        of ``<lam, out>`` in ``A`` and ``B``).  Default: autograd through :meth:`factored_apply`."""
        Al, Bl = A.detach().requires_grad_(True), B.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.factored_apply(Al, Bl, feats)

        def vjp(lam: Tensor) -> tuple[Tensor, Tensor]:
            return torch.autograd.grad(out, (Al, Bl), grad_outputs=lam)

        return out.detach(), vjp

    def adjoint_matmul(self, V: Tensor, W: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``M_g W_g`` for ``M = A_X^*(V)`` and ``W (P, q, k)`` without forming ``M``: ``(P, p, k)``.

        Default: ``d/dA <V, A_X(A W^T)>`` by autograd (exact: the map is linear in ``A``).
        """
        P, p, _ = self.variable_shape()
        A0 = torch.zeros(P, p, W.shape[2], dtype=W.dtype, device=W.device, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.factored_apply(A0, W, feats), A0, grad_outputs=V)
        return g

    def adjoint_rmatmul(self, V: Tensor, U: Tensor, feats: dict[str, Tensor]) -> Tensor:
        """``M_g^T U_g`` for ``M = A_X^*(V)`` and ``U (P, p, k)``: ``(P, q, k)`` (default by autograd)."""
        P, _, q = self.variable_shape()
        B0 = torch.zeros(P, q, U.shape[2], dtype=U.dtype, device=U.device, requires_grad=True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.factored_apply(U, B0, feats), B0, grad_outputs=V)
        return g

    def factors_from_lowrank(self, A: Tensor, B: Tensor, *, rtol: float = 1e-8) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`factors` of ``Z_g = A_g B_g^T`` without forming ``Z`` (QR of both factors).

        ``A_g = Q_a R_a``, ``B_g = Q_b R_b``, ``R_a R_b^T = U S V^T`` give the SVD
        ``Z_g = (Q_a U) S (Q_b V)^T``; returns balanced ``a (m, p)``, ``b (m, q)``, ``gate (m,)``.
        """
        from dualattn.convex.lowrank import balanced_svd

        U, S, V = balanced_svd(A, B)
        smax = S.max() if S.numel() else torch.zeros((), dtype=A.dtype)
        keep = S > rtol * smax.clamp_min(torch.finfo(A.dtype).tiny)
        g_idx, j_idx = torch.nonzero(keep, as_tuple=True)
        root = S[g_idx, j_idx].sqrt()
        return U[g_idx, :, j_idx] * root[:, None], V[g_idx, :, j_idx] * root[:, None], g_idx

    # ---------------------------------------------------------- regulariser R
    def penalty(self, Z: Tensor) -> Tensor:
        """``R(Z) = sum_g ||Z_g||_*``."""
        return _prox.nuclear_norm(Z)

    def prox(self, Z: Tensor, t: float, *, return_penalty: bool = False):
        """``argmin_U 1/2 ||U - Z||_F^2 + t R(U)`` (singular-value soft-thresholding).

        With ``return_penalty=True`` also returns ``R(U)`` (free from the SVD).
        """
        return _prox.nuclear_prox(Z, t, return_penalty=return_penalty)

    def dual_norm(self, V: Tensor) -> Tensor:
        """``R°(V) = max_g ||V_g||_2`` (largest singular value over blocks)."""
        return _prox.spectral_norm(V)

    # ----------------------------------------------------------------- recovery
    def factors(self, Z: Tensor, *, rtol: float = 1e-8) -> tuple[Tensor, Tensor, Tensor]:
        """Balanced SVD factors of every block: ``Z_g = sum_j a_j b_j^T``.

        Returns ``a (m, p)``, ``b (m, q)``, ``gate (m,)`` (block index of each
        factor), dropping singular values below ``rtol * max(s)``.
        """
        U, S, Vh = torch.linalg.svd(Z, full_matrices=False)
        smax = S.max() if S.numel() else torch.zeros((), dtype=Z.dtype)
        keep = S > rtol * smax.clamp_min(torch.finfo(Z.dtype).tiny)
        g_idx, j_idx = torch.nonzero(keep, as_tuple=True)
        root = S[g_idx, j_idx].sqrt()
        a = U[g_idx, :, j_idx] * root[:, None]
        b = Vh[g_idx, j_idx, :] * root[:, None]
        return a, b, g_idx

    def recover(self, Z: Tensor, *, rtol: float = 1e-8, X: Tensor | None = None) -> Weights:
        """Nonconvex weights with the same outputs and ``1/2 sum ||W||^2 = R(Z)``.

        ``X`` (the training inputs) is only used by heads whose recovery depends
        on the data (ReLU cone decompositions).
        """
        a, b, gate = self.factors(Z, rtol=rtol)
        return self.unlift(a, b, gate)

    @abc.abstractmethod
    def unlift(self, a: Tensor, b: Tensor, gate: Tensor) -> Weights:
        """Map factor pairs ``(a_j (p,), b_j (q,))`` of block ``gate_j`` to nonconvex weights."""

    # ------------------------------------------------------------ nonconvex model
    @abc.abstractmethod
    def nonconvex_forward(self, weights: Weights, X: Tensor) -> Tensor:
        """Pooled outputs ``(n, c)`` of the nonconvex head with ``weights`` on ``X``."""

    def nonconvex_penalty(self, weights: Weights) -> Tensor:
        """``1/2 sum ||W||_F^2`` over the trainable weights (multiply by beta)."""
        return 0.5 * sum((weights[k] ** 2).sum() for k in self.trainable)

    @abc.abstractmethod
    def init_nonconvex(self, m: int, *, generator: torch.Generator | None = None, scale: float = 0.1) -> Weights:
        """Random nonconvex weights with ``m`` heads/neurons (for training baselines)."""

    def nonconvex_module(self, weights: Weights) -> NonconvexHead:
        """A ``torch.nn.Module`` computing :meth:`nonconvex_forward` with ``weights``."""
        return NonconvexHead(self, weights)

    def channel_features(self, feats: dict[str, Tensor]) -> Tensor | None:
        """``Phi (n, numel(Z) / c)`` with ``A(Z)_i[e] = <Phi_i, Z.reshape(-1, c)[:, e]>``, when the
        head's features already are that matrix (``admm`` then skips building it column by column,
        one ``apply`` per column); ``None`` otherwise."""
        return None

    def fit_report(self, fit) -> dict[str, Any]:
        """Extra scalars stored in ``ConvexFit.info`` after a solve (e.g. rank, constraint violation)."""
        a, _, _ = fit.head_factors()
        return {"rank": int(a.shape[0])}

    # ------------------------------------------------------------------ CVXPY
    def design_matrix(self, feats: dict[str, Tensor]) -> Tensor:
        """Dense ``(n*c, P*p*q)`` matrix of ``A_X`` (row-major ``vec``); small problems only."""
        shape = self.variable_shape()
        numel = int(np.prod(shape))
        n = next(iter(feats.values())).shape[0]
        if n * self.c * numel > 5e7:
            raise ValueError(f"design matrix too large for CVXPY ({n * self.c} x {numel}); use solver='fista'")
        eye = torch.eye(numel, dtype=self.dtype, device=self.device).reshape(numel, *shape)
        cols = torch.stack([self.apply(eye[k], feats).reshape(-1) for k in range(numel)], dim=1)
        return cols

    def cvxpy_forward(self, z, feats: dict[str, Tensor]):
        """CVXPY expression ``(n, c)`` of ``A_X(Z)`` for the flat variable ``z``."""
        import cvxpy as cp

        M = self.design_matrix(feats).detach().cpu().double().numpy()
        n = next(iter(feats.values())).shape[0]
        return cp.reshape(M @ z, (n, self.c), order="C")

    def cvxpy_penalty(self, z):
        """CVXPY expression of ``R(Z)`` for the flat variable ``z`` (row-major blocks)."""
        import cvxpy as cp

        P, p, q = self.variable_shape()
        terms = []
        for g in range(P):
            block = z[g * p * q : (g + 1) * p * q]
            if min(p, q) == 1:
                terms.append(cp.norm(block, 2))
            else:
                terms.append(cp.normNuc(cp.reshape(block, (p, q), order="C")))
        return cp.sum(cp.hstack(terms)) if len(terms) > 1 else terms[0]


class NonconvexHead(nn.Module):
    """``nn.Module`` wrapper of a head's nonconvex model: ``forward(X (n, s, d)) -> (n, c)``.

    Trainable weights are parameters; fixed tensors (e.g. gate matrices) are buffers.
    """

    def __init__(self, head: ConvexHead, weights: Weights) -> None:
        super().__init__()
        self.head = head
        self.weights = nn.ParameterDict(
            {k: nn.Parameter(v.detach().clone()) for k, v in weights.items() if k in head.trainable}
        )
        self._fixed = [k for k in weights if k not in head.trainable]
        for k in self._fixed:
            self.register_buffer(k, weights[k].detach().clone())

    def all_weights(self) -> Weights:
        w = dict(self.weights.items())
        for k in self._fixed:
            w[k] = getattr(self, k)
        return w

    @property
    def num_heads(self) -> int:
        first = next(iter(self.weights.values()))
        return int(first.shape[0])

    def forward(self, X: Tensor) -> Tensor:
        return self.head.nonconvex_forward(self.all_weights(), X)

    def penalty(self) -> Tensor:
        """``1/2 sum ||W||_F^2`` over trainable weights."""
        return self.head.nonconvex_penalty(self.all_weights())
