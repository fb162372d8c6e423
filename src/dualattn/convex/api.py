"""Public API in the style of scnn: ``fit(head, X, y, beta, ...) -> ConvexFit``.

``fit`` solves ``min_Z sum_i loss(A_{X_i}(Z), y_i) + beta R(Z)`` for the given
head type to a requested relative duality gap and returns the globally optimal
convex model with its certificate, predictions and the equivalent nonconvex
``nn.Module``.  ``fit_path`` solves along decreasing ``beta`` with warm starts.

Solvers (``fit(..., solver=...)``; ``"auto"``, the default, picks one with
:func:`choose_solver`): ``"fista"`` (dense ``Z``, one SVD per iteration),
``"factorised"`` (matrix-free Burer-Monteiro, ``Z = A B^T`` never formed; the only
data-parallel one), ``"cvxpy"`` (reference, tiny problems), ``"auglag"``
(cone-constrained heads).  Every :class:`ConvexFit` exposes ``.factors`` and ``.Z``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dualattn.convex.heads import ConvexHead, get_head
from dualattn.convex.heads.base import NonconvexHead
from dualattn.convex.losses import Loss, check_beta, get_loss
from dualattn.convex.operator import ChunkedOperator
from dualattn.convex import lowrank
from dualattn.convex.distributed import Comm
from dualattn.convex.solvers import admm, augmented_lagrangian, factorised, fista, solve_cvxpy
from dualattn.convex.solvers.admm import ADMM_HEADS, system_size as admm_system_size
from dualattn.convex.solvers.admm import MAX_DIM as ADMM_MAX_DIM
from dualattn.convex.solvers.factorised import GROW, FactoredOperator
from dualattn.convex.solvers.result import SolveResult, certificate

SOLVERS = ("auto", "fista", "factorised", "admm", "cvxpy", "auglag")

#: ``choose_solver`` thresholds: dense-``Z`` bytes for the squared-loss fast path, and
#: flops of one batched SVD of ``Z`` (``P p q min(p, q)``) up to which dense FISTA is used
ADMM_MAX_BYTES = 2**26
#: heads ``"auto"`` sends to ``admm`` for squared loss (``admm`` itself supports ``ADMM_HEADS``)
ADMM_AUTO_HEADS = ("linear", "gated", "relu", "mixer-linear", "mixer-gated", "fno")
FISTA_MAX_SVD_FLOPS = 2e7
#: rank at which ``choose_solver`` compares the factored and dense forward costs: the factorised
#: solver's first growth step adds ``GROW`` columns
COST_RANK = GROW


def choose_solver(head: ConvexHead, n: int, s: int, d: int, c: int, loss: str | Loss,
                  dtype: torch.dtype = torch.float64, *, distributed: bool = False) -> str:
    """The solver ``fit(..., solver="auto")`` uses for ``head`` (set up for ``d``, ``c``) on ``n x s`` tokens.

    * heads with cone constraints (``mlp-relu-cone``): ``"auglag"`` (the only valid one);
    * data-parallel (``torch.distributed`` initialised): ``"factorised"``;
    * squared loss, a head in ``ADMM_AUTO_HEADS`` (the attention, mixer and FNO heads; ``admm``
      also solves the MLP heads, but there FISTA's steps are two cheap products and it is
      faster than building the ``P d x P d`` Gram: ``benchmarks/results/convex_solvers.csv``,
      scnn's problem), a dense ``Z`` of at most ``ADMM_MAX_BYTES`` (64 MiB)
      and a least-squares system of order ``min(n, r) <= admm.MAX_DIM`` (8000; ``r`` = the
      symmetric-reduced dimension, ``P d^2 (d+1)/2`` for the attention heads), whose Woodbury
      step (``n < r``) keeps at most 256 MiB of ``n x r`` features: ``"admm"`` (exact
      least-squares steps);
    * one SVD of the dense ``Z`` (``P p q min(p, q)`` flops, e.g. ``d^4 c^2`` for the
      linear head) at most ``FISTA_MAX_SVD_FLOPS`` (2e7: linear head up to ``d = 16`` at
      ``c = 10``; FNO and mixer-linear heads at any width): ``"fista"``; measured
      (``benchmarks/results/convex_width.csv``, cross-entropy, tol 1e-3): FISTA 1.3 s vs
      factorised 2.1 s at ``d = 16``, factorised 2.9 s vs FISTA 8.8 s at ``d = 32``;
    * heads without a matrix-free :meth:`~ConvexHead.factored_apply` (FNO, mixer-linear,
      MLP: small ``Z`` that the factored path would form anyway): ``"fista"``;
    * a dense ``Z`` of at most ``ADMM_MAX_BYTES`` whose head's factored forward costs at least
      the dense one at rank ``COST_RANK`` (:meth:`~ConvexHead.factored_cost_ratio` ``>= 1``: the
      mixer-gated head, ``r (s^2 + c) / (s c (s + 1))``, 1.6 at ``s = c = 10``): ``"fista"``;
      measured on the transfer study's digits-clutter tokens (mixer-gated, d = 64, s = 10,
      c = 10, n = 1000, cross-entropy, 300 s each, one thread): FISTA rel. gap 2.9e-3 (0.55 s
      per iteration), factorised 0.12 (2.6 s per evaluation);
    * otherwise ``"factorised"``: memory ``O((p + q) r)`` instead of ``8 P p q`` bytes for ``Z``
      (4.5 GB for the linear head at ``d = 384``, ``c = 10``) and no SVD of ``Z``.

    ``n`` is accepted for future rules (the per-iteration cost of every solver is linear in
    ``n``, so it does not change the choice today).
    """
    if hasattr(head, "constraints"):
        return "auglag"
    if distributed:
        return "factorised"
    P, p, q = head.variable_shape()
    itemsize = torch.finfo(dtype).bits // 8
    dense_bytes = P * p * q * itemsize
    name = loss if isinstance(loss, str) else loss.name
    order, features = admm_system_size(head, n)
    if (name == "squared" and head.name in ADMM_AUTO_HEADS and dense_bytes <= ADMM_MAX_BYTES
            and order <= ADMM_MAX_DIM and features * itemsize <= 4 * ADMM_MAX_BYTES):
        return "admm"
    if P * p * q * min(p, q) <= FISTA_MAX_SVD_FLOPS or type(head).factored_apply is ConvexHead.factored_apply:
        return "fista"
    ratio = head.factored_cost_ratio(s, COST_RANK)
    if ratio is not None and ratio >= 1.0 and dense_bytes <= ADMM_MAX_BYTES:
        return "fista"
    return "factorised"


def as_features(X, name: str = "X", dtype: torch.dtype = torch.float64) -> Tensor:
    """Validate ``X``: a finite float ``(n, s, d)`` tensor/array with ``n, s, d >= 1``."""
    if isinstance(X, np.ndarray):
        X = torch.from_numpy(X)
    if not isinstance(X, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape (n, s, d), got {type(X).__name__}")
    if not torch.is_floating_point(X):
        raise TypeError(f"{name} must have a floating dtype, got {X.dtype}")
    if X.ndim != 3 or min(X.shape) < 1:
        raise ValueError(f"{name} must have shape (n, s, d) with n, s, d >= 1, got {tuple(X.shape)}")
    if not torch.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or inf")
    return X.to(dtype)


def as_targets(y) -> Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor or numpy array, got {type(y).__name__}")
    return y


@dataclass
class ConvexFit:
    """A solved convex head: the optimal point, its certificate and conversions.

    The solution is available in two forms, for every solver:

    * ``.factors = (A, B)``, ``A (P, p, r)``, ``B (P, q, r)`` with ``Z_g = A_g @ B_g.T`` in the
      head's block layout (``head.variable_shape() = (P, p, q)``).  Factorised fits store
      them (balanced: ``1/2 (||A||^2 + ||B||^2) = sum_g ||Z_g||_*``); for dense fits they come
      from the SVD of ``Z`` with its numerical rank.
    * ``.Z`` (dense, ``(P, p, q)``).  For factorised fits it is formed on first use only
      if it takes at most ``max_dense_bytes`` (default 2 GiB), otherwise a ``MemoryError``
      points to ``.factors``.
    """

    head: ConvexHead
    Z_dense: Tensor | None
    beta: float
    loss: Loss
    objective: float
    dual_objective: float
    gap: float
    rel_gap: float
    iterations: int
    time: float
    status: str
    solver: str
    history: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    X_train: Tensor | None = field(default=None, repr=False)
    Y_train: Tensor | None = field(default=None, repr=False)
    _weights: dict = field(default_factory=dict, repr=False)
    #: ``(A, B)`` stored by factorised solvers (else computed from ``Z`` on demand)
    factored: tuple[Tensor, Tensor] | None = field(default=None, repr=False)
    #: largest dense ``Z`` (bytes) that ``.Z`` forms from the factors
    max_dense_bytes: float = field(default=2 * 2**30, repr=False)

    @property
    def is_factorised(self) -> bool:
        """True when the solution is stored as factors (``Z`` never formed by the solver)."""
        return self.Z_dense is None

    @property
    def Z(self) -> Tensor:
        """Dense ``Z (P, p, q)``; formed from the factors on first use (if it fits ``max_dense_bytes``)."""
        if self.Z_dense is None:
            A, B = self.factored
            P, p, q = A.shape[0], A.shape[1], B.shape[1]
            need = P * p * q * A.element_size()
            if need > self.max_dense_bytes:
                raise MemoryError(
                    f"the dense Z of this factorised fit ({P} x {p} x {q}) needs {need / 2**30:.1f} GiB "
                    f"> max_dense_bytes={self.max_dense_bytes / 2**30:.1f} GiB; use fit.factors = (A, B) "
                    f"(Z_g = A_g @ B_g.T) or raise fit.max_dense_bytes")
            self.Z_dense = lowrank.dense(A, B)
        return self.Z_dense

    @property
    def factors(self) -> tuple[Tensor, Tensor]:
        """``(A (P, p, r), B (P, q, r))`` with ``Z_g = A_g @ B_g.T`` (see the class docstring)."""
        if self.factored is None:
            Z = self.Z_dense
            U, S, Vh = torch.linalg.svd(Z, full_matrices=False)
            keep = S > 1e-12 * S.max().clamp_min(torch.finfo(Z.dtype).tiny)
            r = int(keep.sum(dim=1).max()) if S.numel() else 0
            root = (S[:, :r] * keep[:, :r]).sqrt()
            self.factored = (U[:, :, :r] * root[:, None], Vh[:, :r].transpose(1, 2) * root[:, None])
        return self.factored

    def head_factors(self, *, rtol: float = 1e-8) -> tuple[Tensor, Tensor, Tensor]:
        """``head.factors`` of the solution (balanced pairs ``a (m, p)``, ``b (m, q)``, block ``gate (m,)``)
        without forming ``Z`` for factorised fits."""
        if self.is_factorised:
            return self.head.factors_from_lowrank(*self.factors, rtol=rtol)
        return self.head.factors(self.Z, rtol=rtol)

    def warm_start(self):
        """What ``fit(..., Z0=...)`` accepts to warm start from this solution (factors or ``Z``)."""
        return self.factors if self.is_factorised else self.Z

    def predict(self, X) -> Tensor:
        """Pooled outputs ``(n, c)`` of the convex model (logits for cross-entropy)."""
        X = as_features(X, dtype=self.head.dtype).to(self.head.device)
        if self.is_factorised:
            return FactoredOperator(self.head, X).forward(*self.factors)
        op = ChunkedOperator(self.head, X, chunk_size=4096)
        return op.forward(self.Z)

    def predict_labels(self, X) -> Tensor:
        """``argmax`` of :meth:`predict` (classification)."""
        return self.predict(X).argmax(dim=1)

    def nonconvex_weights(self, *, rtol: float = 1e-8) -> dict[str, Tensor]:
        """Recovered nonconvex weights (one head/neuron per retained singular pair); cached."""
        if rtol not in self._weights:
            if self.is_factorised and type(self.head).recover is ConvexHead.recover:
                # the factors ARE the nonconvex weights (after balancing)
                self._weights[rtol] = self.head.unlift(*self.head_factors(rtol=rtol))
            else:
                self._weights[rtol] = self.head.recover(self.Z, rtol=rtol, X=self.X_train)
        return {k: v.clone() for k, v in self._weights[rtol].items()}

    def to_nonconvex(self, *, rtol: float = 1e-8) -> NonconvexHead:
        """``nn.Module`` with the recovered weights; same outputs and objective as the convex fit."""
        return self.head.nonconvex_module(self.nonconvex_weights(rtol=rtol))

    @property
    def num_heads(self) -> int:
        """Number of nonconvex heads needed (``m*`` = total rank of the blocks)."""
        return int(next(iter(self.nonconvex_weights().values())).shape[0])

    def save(self, path: str | Path) -> None:
        """Save head type/options, ``Z`` (or the factors), ``beta``, loss and certificate (not the training data)."""
        state = {
            "head": self.head.name, "head_config": self.head.get_config(), "d": self.head.d, "c": self.head.c,
            "s": self.head.s, "Z": None if self.is_factorised else self.Z.detach().cpu(),
            "factors": tuple(t.detach().cpu() for t in self.factors) if self.is_factorised else None,
            "beta": self.beta, "loss": self.loss.name,
            "summary": self.summary(), "history": self.history,
            "gates": self.head.get_gates() if hasattr(self.head, "get_gates") else None,
        }
        torch.save(state, Path(path))

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> ConvexFit:
        """Inverse of :meth:`save` (with the saved gates, so predictions match)."""
        st = torch.load(Path(path), weights_only=False)
        head = get_head(st["head"], **st["head_config"])
        Z, fac = st["Z"], st.get("factors")
        head.setup(st["d"], st["c"], s=st["s"], dtype=(Z if fac is None else fac[0]).dtype, device=device)
        if st.get("gates") is not None:
            head.set_gates(st["gates"])
        sm = st["summary"]
        return cls(
            head=head, Z_dense=None if Z is None else Z.to(device), beta=st["beta"], loss=get_loss(st["loss"]), objective=sm["objective"],
            dual_objective=sm["dual_objective"], gap=sm["gap"], rel_gap=sm["rel_gap"], iterations=sm["iterations"],
            time=sm["time"], status=sm["status"], solver=sm["solver"], history=st["history"],
            info={k: v for k, v in sm.items() if k not in cls.__dataclass_fields__ and k not in ("head", "loss")},
            factored=None if fac is None else tuple(t.to(device) for t in fac),
        )

    def summary(self) -> dict:
        keys = ("objective", "dual_objective", "gap", "rel_gap", "iterations", "time", "status", "solver", "beta")
        out = {k: getattr(self, k) for k in keys}
        out.update(head=self.head.name, loss=self.loss.name, **{k: v for k, v in self.info.items() if np.isscalar(v)})
        return out


def nonconvex_objective(module: nn.Module, X, y, beta: float, *, loss: str | Loss = "squared",
                        num_classes: int | None = None) -> Tensor:
    """``sum_i loss(f(X_i), y_i) + beta/2 sum ||W||^2`` of a :class:`NonconvexHead` (differentiable)."""
    lossf = get_loss(loss)
    X = as_features(X, dtype=next(module.parameters()).dtype)
    Y, _ = lossf.targets(as_targets(y), X.shape[0], num_classes)
    Y = Y.to(X.device) if lossf.name == "cross_entropy" else Y.to(X)
    return lossf.value(module(X), Y) + check_beta(beta) * module.penalty()


def _prepare(head, X, y, beta, loss, num_classes, dtype, device, head_options):
    head = get_head(head, **(head_options or {}))
    lossf = get_loss(loss)
    beta = check_beta(beta)
    X = as_features(X, dtype=dtype)
    Y, c = lossf.targets(as_targets(y), X.shape[0], num_classes)
    head.setup(int(X.shape[2]), c, s=head.s, dtype=dtype, device=device)
    X = X.to(device)
    Y = Y.to(device) if lossf.name == "cross_entropy" else Y.to(device=device, dtype=dtype)
    return head, lossf, beta, X, Y


def fit(
    head: str | ConvexHead,
    X,
    y,
    beta: float,
    *,
    loss: str | Loss = "squared",
    solver: str = "auto",
    tol: float = 1e-4,
    num_classes: int | None = None,
    Z0: Tensor | tuple[Tensor, Tensor] | None = None,
    max_iter: int | None = None,
    max_time: float | None = None,
    verbose: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    chunk_size: int = 4096,
    cvxpy_solver: str = "CLARABEL",
    cvxpy_max_gb: float | None = 2.0,
    certify_float64: bool = True,
    head_options: dict | None = None,
    **solver_options,
) -> ConvexFit:
    """Globally optimal convex head for ``X (n, s, d)``, targets ``y`` and weight decay ``beta``.

    ``loss``: ``"squared"`` (float targets ``(n,)``/``(n, c)``, or integer labels
    one-hot encoded) or ``"cross_entropy"`` (integer labels in ``[0, c)``).
    ``solver``: ``"auto"`` (default: :func:`choose_solver` by size and loss),
    ``"fista"`` (dense ``Z``; stops at relative duality gap ``tol``),
    ``"factorised"`` (matrix-free Burer-Monteiro with rank growth, certified to
    ``tol``; options ``inner_iters``, ``max_rank``, ``delta`` ... of
    :func:`~dualattn.convex.solvers.factorised.factorised`), ``"admm"``
    (squared loss only, heads ``linear``, ``gated``, ``mixer-linear``, ``mixer-gated``,
    ``fno``: exact least-squares steps, fastest on small problems), ``"cvxpy"``
    (reference; small problems: refused with a ``ValueError`` when its estimated
    memory exceeds ``cvxpy_max_gb``, ``None`` = no limit) or ``"auglag"`` (required by
    cone-constrained heads such as ``mlp-relu-cone``).  Every solver's ``status`` is
    ``"optimal"`` only when our certified relative gap is ``<= tol``.  ``Z0``
    warm-starts from a dense ``Z`` or factors ``(A, B)`` (e.g. ``previous_fit.warm_start()``).
    ``max_iter`` caps the iterations of FISTA and ADMM (default 20000) and the outer
    stages (L-BFGS + certificate + growth or polish) of the factorised solver (its
    ``max_outer``, default 200); ``max_time`` (seconds) caps every solver.

    **Data parallel**: when ``torch.distributed`` is initialised with more than one
    process, ``X`` and ``y`` are this process's shard of the samples, the program is
    the one on the concatenated data, and the factorised solver (the only one
    allowed, chosen by ``"auto"``) all-reduces values, gradients, ``A^*`` products
    and certificate sums: every process returns the same factors and certificate.
    ``num_classes`` defaults to the largest label over all processes + 1.

    ``dtype=torch.float32`` solves in single precision; with ``certify_float64``
    the reported objective/gap/status are then recomputed in float64 at the
    returned point.  Extra ``solver_options`` go to the solver (e.g. ``shrink``,
    ``restart`` for FISTA; ``rho``, ``inner_iters`` for auglag; ``check_every``,
    ``rho``, ``mode`` for ADMM).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    comm = Comm()
    if comm.active and num_classes is None and get_loss(loss).name == "cross_entropy":
        num_classes = _global_num_classes(y, comm)
    head, lossf, beta, X, Y = _prepare(head, X, y, beta, loss, num_classes, dtype, device, head_options)
    head.check_X(X)  # binds the token count of token-mixing heads
    if solver == "auto":
        n, s, d = X.shape
        solver = choose_solver(head, n, s, d, head.c, lossf, dtype, distributed=comm.active)
    if hasattr(head, "constraints") and solver != "auglag":
        raise ValueError(f"head {head.name!r} has cone constraints: use solver='auglag', got {solver!r}")
    if comm.active and solver != "factorised":
        raise ValueError(f"torch.distributed is initialised: only solver='factorised' (or 'auto') solves "
                         f"data-parallel, got {solver!r}")
    if solver == "factorised":
        if max_iter is not None:
            if "max_outer" in solver_options:
                raise ValueError("give max_iter or max_outer (the factorised solver's outer stages), not both")
            solver_options = {**solver_options, "max_outer": max_iter}
        opts = {"chunk_size": _factorised_chunk(head, X)} | solver_options
        res = factorised(head, X, lossf, Y, beta, Z0=Z0, tol=tol, max_time=max_time, verbose=verbose,
                         comm=comm, **opts)
        if dtype != torch.float64 and certify_float64:
            _certify_factors_float64(head, lossf, beta, res, X, Y, opts["chunk_size"], dtype, device, comm, tol)
        return _to_fit(head, lossf, beta, res, X, Y)
    if isinstance(Z0, (tuple, list)):
        Z0 = lowrank.dense(*Z0)
    op = ChunkedOperator(head, X, chunk_size=chunk_size)
    max_iter = 20000 if max_iter is None else max_iter
    if solver == "fista":
        res = fista(op, lossf, Y, beta, Z0=Z0, tol=tol, max_iter=max_iter, max_time=max_time,
                    verbose=verbose, **solver_options)
    elif solver == "auglag":
        res = augmented_lagrangian(op, lossf, Y, beta, Z0=Z0, tol=tol, max_time=max_time, verbose=verbose,
                                   **solver_options)
    elif solver == "admm":
        res = admm(head, X, Y, lossf, beta, Z0=Z0, tol=tol, max_iter=max_iter, max_time=max_time,
                   verbose=verbose, op=op, **solver_options)
    else:
        res = solve_cvxpy(op, lossf, Y, beta, solver=cvxpy_solver, verbose=verbose, tol=tol,
                          max_gb=cvxpy_max_gb, **solver_options)
    if dtype != torch.float64 and certify_float64:
        _certify_float64(head, lossf, beta, res, X, Y, chunk_size, dtype, device, tol)
    return _to_fit(head, lossf, beta, res, X, Y)


def _set_certified(res: SolveResult, cert: dict, tol: float) -> None:
    """Take a float64 certificate into ``res``: ``"optimal"`` iff its relative gap is ``<= tol``; a solve that
    stopped as optimal in low precision but is not certified in float64 becomes ``"inaccurate"``."""
    res.objective, res.dual_objective = cert["primal"], cert["dual"]
    res.gap, res.rel_gap = cert["gap"], cert["rel_gap"]
    if res.rel_gap <= tol:
        res.status = "optimal"
    elif res.status == "optimal":
        res.status = "inaccurate"


def _global_num_classes(y, comm: Comm) -> int:
    """``max label + 1`` over all processes (integer labels, data-parallel fits)."""
    y = as_targets(y)
    if torch.is_floating_point(y) or y.numel() == 0:
        return None
    return int(comm.max(float(y.max()))) + 1


def _factorised_chunk(head: ConvexHead, X: Tensor, budget_bytes: float = 2**27) -> int:
    """Samples per chunk so that per-chunk intermediates at rank 64 fit ``budget_bytes``."""
    per_sample = head.factored_bytes_per_sample(int(X.shape[1]), 64)
    return int(min(max(budget_bytes // max(per_sample, 1), 16), 4096))


def _certify_factors_float64(head, lossf, beta, res, X, Y, chunk_size, dtype, device, comm, tol) -> None:
    """Float64 certificate of a low-precision factorised solve (status recomputed as in :func:`_set_certified`)."""
    from dualattn.convex.solvers.factorised import certify_factors

    info32 = {"objective_lowprec": res.objective, "gap_lowprec": res.gap, "rel_gap_lowprec": res.rel_gap,
              "status_lowprec": res.status}
    head.setup(head.d, head.c, s=head.s, dtype=torch.float64, device=device)
    try:
        Y64 = Y if lossf.name == "cross_entropy" else Y.double()
        op = FactoredOperator(head, X.double(), chunk_size=chunk_size, comm=comm)
        cert = certify_factors(op, lossf, Y64, beta, *(t.double() for t in res.factors), eps=tol / 4)
    finally:
        head.setup(head.d, head.c, s=head.s, dtype=dtype, device=device)
    _set_certified(res, cert, tol)
    res.info.update(info32, certified_float64=True, certificate=cert["certificate"])


def _certify_float64(head, lossf, beta, res, X, Y, chunk_size, dtype, device, tol: float) -> None:
    """Replace a low-precision solve's certificate by one evaluated in float64 at the returned ``Z``,
    and recompute ``status`` from it: ``"optimal"`` iff the float64 relative gap is ``<= tol``; a solve
    that stopped as optimal in low precision but is not certified in float64 becomes ``"inaccurate"``."""
    info32 = {"objective_lowprec": res.objective, "gap_lowprec": res.gap, "rel_gap_lowprec": res.rel_gap,
              "status_lowprec": res.status}
    head.setup(head.d, head.c, s=head.s, dtype=torch.float64, device=device)
    try:
        Y64 = Y if lossf.name == "cross_entropy" else Y.double()
        op = ChunkedOperator(head, X.double(), chunk_size=chunk_size)
        cert = certificate(head, op, lossf, Y64, beta, res.Z.double(), lam=res.lam)
    finally:
        head.setup(head.d, head.c, s=head.s, dtype=dtype, device=device)
    _set_certified(res, cert, tol)
    res.info.update(info32, certified_float64=True)


def _to_fit(head: ConvexHead, lossf: Loss, beta: float, res: SolveResult, X: Tensor, Y: Tensor) -> ConvexFit:
    fitted = ConvexFit(
        head=head, Z_dense=res.Z, factored=res.factors, beta=beta, loss=lossf, objective=res.objective, dual_objective=res.dual_objective,
        gap=res.gap, rel_gap=res.rel_gap, iterations=res.iterations, time=res.time, status=res.status,
        solver=res.solver, history=res.history, info=dict(res.info), X_train=X, Y_train=Y,
    )
    fitted.info.update(head.fit_report(fitted))
    return fitted


def beta_max(head: str | ConvexHead, X, y, *, loss: str | Loss = "squared", num_classes: int | None = None,
             dtype: torch.dtype = torch.float64, device="cpu", head_options: dict | None = None) -> float:
    """Smallest ``beta`` for which ``Z = 0`` is optimal: ``R°(A^* grad F(0))``.

    When the dense ``A^*(lam)`` would exceed 256 MiB it is applied matrix-free and the
    value is the valid upper bound of :meth:`~dualattn.convex.lanczos.BlockOperator.norm_bound`
    (relative slack ``1e-4``, failure probability ``1e-6``), so ``Z = 0`` is still optimal at it.
    """
    head, lossf, _, X, Y = _prepare(head, X, y, 1.0, loss, num_classes, dtype, device, head_options)
    head.check_X(X)
    _, lam = lossf.value_grad(torch.zeros(X.shape[0], head.c, dtype=dtype, device=device), Y)
    P, p, q = head.variable_shape()
    if P * p * q * X.element_size() > 2**28 and not hasattr(head, "constraints"):
        op = FactoredOperator(head, X, chunk_size=_factorised_chunk(head, X))
        return float(op.adjoint_operator(lam).norm_bound(eps=1e-4).bound.max())
    op = ChunkedOperator(head, X)
    return float(head.dual_norm(op.adjoint(lam)))


CHECKPOINT_FORMAT = "dualattn.fit_path/2"


def _array_digest(A) -> str:
    """sha256 of a tensor/array's dtype, shape and bytes (CPU, contiguous)."""
    arr = A.detach().cpu().numpy() if isinstance(A, Tensor) else np.asarray(A)
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def path_fingerprint(head: ConvexHead, X, y, betas, *, loss, num_classes) -> dict:
    """What a ``fit_path`` checkpoint was made for: data shapes and hashes, loss, head, beta grid."""
    as_features(X[:1] if len(X) else X)  # type/shape check without a float64 copy of all of X
    y = as_targets(y)
    return {
        "X_shape": list(X.shape), "X_sha256": _array_digest(X),
        "y_shape": list(y.shape), "y_dtype": str(y.dtype), "y_sha256": _array_digest(y),
        "loss": get_loss(loss).name, "num_classes": num_classes,
        "head": head.name, "head_config": json.loads(json.dumps(head.get_config(), default=str)),
        "betas": [float(b) for b in betas],
    }


def _load_checkpoint(path: Path, fingerprint: dict) -> dict[float, dict]:
    """Finished solutions of a ``fit_path`` checkpoint; refuses one made for another problem."""
    try:
        state = torch.load(path, weights_only=False)
    except Exception as err:  # truncated zip, bad pickle, ...: say which file
        raise ValueError(f"fit_path checkpoint {str(path)!r} is corrupt or truncated ({type(err).__name__}: "
                         f"{err}); delete it to start the path again") from err
    if not (isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT and "fingerprint" in state
            and isinstance(state.get("solutions"), dict)):
        raise ValueError(f"fit_path checkpoint {str(path)!r} is not a {CHECKPOINT_FORMAT} checkpoint "
                         f"(written by another program or an older version); delete it or pass another path")
    old = state["fingerprint"]
    diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
    if diff:
        details = "; ".join(f"{k}: checkpoint {_short(old.get(k))} vs now {_short(fingerprint.get(k))}"
                            for k in diff)
        raise ValueError(f"fit_path checkpoint {str(path)!r} was made for a different problem ({details}); "
                         f"pass another checkpoint path (or delete this one) instead of mixing solutions")
    return state["solutions"]


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _save_checkpoint(path: Path, fingerprint: dict, solutions: dict) -> None:
    """Atomic save (temporary file + rename), so an interrupted write never leaves a truncated file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "solutions": solutions}, tmp)
    os.replace(tmp, path)


def fit_path(
    head: str | ConvexHead,
    X,
    y,
    betas,
    *,
    checkpoint: str | Path | None = None,
    verbose: bool = False,
    head_options: dict | None = None,
    **fit_options,
) -> list[ConvexFit]:
    """Solve for every ``beta`` in decreasing order, warm-starting each from the previous ``Z``.

    With ``checkpoint`` (a ``.pt`` file) finished solutions are saved after each
    ``beta`` (atomically) and reused on a rerun (resume: each saved ``beta`` is
    warm-started from its solution and re-certified).  The checkpoint stores a
    fingerprint of the problem (shapes and sha256 of ``X`` and ``y``, loss,
    ``num_classes``, head name and options, the beta grid); resuming with a
    checkpoint made for anything else, or a corrupt/truncated file, raises a
    ``ValueError`` naming the file.
    """
    betas = sorted((check_beta(b) for b in betas), reverse=True)
    if not betas:
        raise ValueError("betas must contain at least one value")
    head = get_head(head, **(head_options or {}))
    done: dict[float, dict] = {}
    fingerprint = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        fingerprint = path_fingerprint(head, X, y, betas, loss=fit_options.get("loss", "squared"),
                                       num_classes=fit_options.get("num_classes"))
        if checkpoint.exists():
            done = _load_checkpoint(checkpoint, fingerprint)
    fits: list[ConvexFit] = []
    Z0 = None
    for k, beta in enumerate(betas):
        if beta in done:
            Z0 = done[beta]["Z"]
        f = fit(head, X, y, beta, Z0=Z0, verbose=verbose, **fit_options)
        fits.append(f)
        Z0 = f.warm_start()
        if verbose:
            print(f"[{k + 1}/{len(betas)}] beta={beta:.4g} obj={f.objective:.6g} rel_gap={f.rel_gap:.2e} "
                  f"iters={f.iterations} time={f.time:.2f}s")
        if checkpoint is not None:
            done[beta] = {"Z": f.Z.detach().cpu(), "summary": json.loads(json.dumps(f.summary(), default=str))}
            _save_checkpoint(checkpoint, fingerprint, done)
    return fits


def fit_relu(
    head: str | ConvexHead,
    X,
    y,
    beta: float,
    *,
    refits: int = 3,
    head_options: dict | None = None,
    verbose: bool = False,
    **fit_options,
) -> ConvexFit:
    """ReLU heads (``relu``, ``mlp-relu``) with gate re-fitting; returns the fit whose decomposed
    ReLU network has the lowest nonconvex objective.

    After each gated solve, the first-layer weights of the largest recovered
    gated units become the new gates (``H_g = W1_j / ||W1_j||``, remaining slots
    keep their old gates): a unit whose gate is its own weight lies in its cone,
    so the next gated solution needs less cone correction.  A heuristic (the
    ReLU problem is not certified); ``info['refits']`` lists, per round,
    ``(gated optimum, relu_objective, cone_violation)``.
    """
    head = get_head(head, **(head_options or {}))
    if not hasattr(head, "gated_weights") or not hasattr(head, "set_gates"):
        raise TypeError(f"fit_relu needs a ReLU head with re-fittable gates ('relu', 'mlp-relu'), got {head.name!r}")
    if not (isinstance(refits, int) and refits >= 0):
        raise ValueError(f"refits must be an int >= 0, got {refits!r}")
    best = fit(head, X, y, beta, verbose=verbose, **fit_options)
    best_gates = head.get_gates()
    rounds = [(best.objective, best.info["relu_objective"], best.info["cone_violation"])]
    current = best
    for _ in range(refits):
        W1 = current.head.gated_weights(current.Z)["W1"]
        if W1.shape[0] == 0:
            break
        norms = W1.flatten(1).norm(dim=1)
        top = torch.argsort(norms, descending=True)[: head.num_gates]
        gates = head.get_gates()
        gates[: len(top)] = (W1[top] / norms[top].reshape((-1,) + (1,) * (W1.ndim - 1))).detach().cpu().double()
        head.set_gates(gates)
        current = fit(head, X, y, beta, verbose=verbose, **fit_options)
        rounds.append((current.objective, current.info["relu_objective"], current.info["cone_violation"]))
        if verbose:
            print(f"refit {len(rounds) - 1}: gated={rounds[-1][0]:.6g} relu={rounds[-1][1]:.6g} "
                  f"violation={rounds[-1][2]:.3f}")
        if current.info["relu_objective"] < best.info["relu_objective"]:
            best, best_gates = current, head.get_gates()
    head.set_gates(best_gates)
    best.info["refits"] = rounds
    return best


__all__ = ["fit", "fit_path", "fit_relu", "beta_max", "choose_solver", "ConvexFit", "nonconvex_objective",
           "as_features", "SOLVERS"]
