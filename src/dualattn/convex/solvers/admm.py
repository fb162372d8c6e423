"""ADMM with an exact least-squares step: the fast path for squared-loss convex heads.

Solves ``min_Z 1/2 ||A Z - Y||_F^2 + beta R(Z)`` (``R`` = sum of block nuclear
norms) by the splitting ``Z = W`` (scaled form, Boyd et al. 2011, sec. 3.1 and 4.2)::

    Z_k+1 = (A^*A + rho I)^{-1} (A^*Y + rho (W_k - U_k))          exact least squares
    Zh    = alpha Z_k+1 + (1 - alpha) W_k                          over-relaxation
    W_k+1 = prox_{(beta/rho) R}(Zh + U_k)                          block singular value thresholding
    U_k+1 = U_k + Zh - W_k+1

**Structure used.**  Every supported head is *channel separable*: output
channel ``e`` reads only the columns ``j = e mod c`` of ``Z`` through the SAME
per-sample feature vector ``phi_i`` (dimension ``D_e = numel(Z) / c``)::

    A(Z)_i[e] = <phi_i, Zc[:, e]>,          Zc = Z.reshape(-1, c),

so ``A^*A = K ⊗ I_c`` with ``K = Phi^T Phi`` (``D_e x D_e``) and the ``c``
channels share one factorisation.  For the attention heads (``linear``,
``gated``) ``phi_i[(g, k, a, l)]`` is symmetric in ``(k, l)`` (it is built from
``X^T X``-like statistics), so ``Phi = Phi_r Q^T`` with the orthonormal basis
``Q`` of the ``(k, l)``-symmetric subspace (``r ≈ D_e / 2``) and::

    (K + rho I)^{-1} b = Q (K_r + rho I)^{-1} Q^T b + (b - Q Q^T b) / rho,     K_r = Phi_r^T Phi_r.

``(K_r + rho I)^{-1}`` is applied through a Cholesky factor of

* the reduced Gram ``K_r + rho I`` (``r x r``, built once by streaming over the
  data, so iterations cost nothing in ``n``) when ``n >= r``;
* otherwise Woodbury in sample space:
  ``(K_r + rho I)^{-1} = (I - Phi_r^T (Phi_r Phi_r^T + rho I)^{-1} Phi_r) / rho``
  (``n x n`` factor).

The factor is recomputed only when ``rho`` changes (residual balancing,
checked every ``check_every`` iterations, at most ``max_rho_updates`` times).

**Certificate** (evaluated every ``check_every`` iterations, not every one):
dual candidates ``lam = A V - Y`` for ``V`` = the thresholded iterate ``W``
(low rank, our primal point) and the least-squares iterate ``Z`` (at the ADMM
fixed point ``A^* lam_Z = -rho U`` with ``R°(rho U) <= beta``, so ``lam_Z`` is
nearly dual feasible and its scaling ``theta`` barely shrinks it), and the point
``lam_G = A V_G - Y`` whose ``A^* lam_G`` is ``A^* lam_Z`` with its singular values
clipped at ``beta`` (``V_G = (K + delta I)^{-1} (G + A^*Y)``, a small ridge ``delta =
dual_ridge * trace(K) / D``), each scaled into ``{R°(A^* lam) <= beta}`` as in
:mod:`.result`; the best value is kept.  In
the Gram branch these are evaluated from ``K_r``, ``A^*Y`` and ``||Y||^2`` alone.
When that estimate reaches ``tol`` the point is re-certified with
:func:`~dualattn.convex.solvers.result.certificate` on the head's own operator,
and ``status = "optimal"`` only if that independent certificate is ``<= tol``.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dualattn.convex.losses import Loss
from dualattn.convex.operator import ChunkedOperator
from dualattn.convex.solvers.result import SolveResult, certificate, relative_gap

#: heads whose ``A_X`` is channel separable (checked numerically at set-up as well)
ADMM_HEADS = ("linear", "gated", "relu", "mixer-linear", "mixer-gated", "fno", "mlp-gated", "mlp-relu")
#: heads whose features are symmetric in the (k, l) indices of ``X^T X``
SYMMETRIC_HEADS = ("linear", "gated", "relu")
#: default largest matrix order ``admm`` factorises (``max_dim``)
MAX_DIM = 8000


class _Basis:
    """Orthonormal ``Q (D, r)`` of a subspace containing every feature row, as index maps.

    ``Q^T x = w1 * x[i1] + w2 * x[i2]`` and ``Q y`` is its transpose (two scatters).
    """

    def __init__(self, D: int, i1: Tensor | None = None, i2: Tensor | None = None,
                 w1: Tensor | None = None, w2: Tensor | None = None) -> None:
        self.D = D
        self.identity = i1 is None
        self.r = D if self.identity else int(i1.numel())
        self.i1, self.i2, self.w1, self.w2 = i1, i2, w1, w2

    def down(self, x: Tensor) -> Tensor:
        """``Q^T x`` for ``x (D, c)``."""
        if self.identity:
            return x
        return self.w1[:, None] * x[self.i1] + self.w2[:, None] * x[self.i2]

    def up(self, y: Tensor) -> Tensor:
        """``Q y`` for ``y (r, c)``."""
        if self.identity:
            return y
        out = torch.zeros(self.D, y.shape[1], dtype=y.dtype, device=y.device)
        out.index_add_(0, self.i1, self.w1[:, None] * y)
        out.index_add_(0, self.i2, self.w2[:, None] * y)
        return out

    def to(self, dtype, device) -> _Basis:
        if not self.identity:
            self.i1, self.i2 = self.i1.to(device), self.i2.to(device)
            self.w1, self.w2 = self.w1.to(device=device, dtype=dtype), self.w2.to(device=device, dtype=dtype)
        return self


def symmetric_basis(P: int, d: int) -> _Basis:
    """Basis of ``Zc`` rows ``(g, k, a, l)`` (``P`` blocks, ``k, a, l < d``) symmetric under ``k <-> l``:
    ``(e_{gkal} + e_{glak}) / sqrt 2`` for ``k < l`` and ``e_{gkak}``; ``r = P d^2 (d + 1) / 2``."""
    g, k, a, l = torch.meshgrid(*(torch.arange(m) for m in (P, d, d, d)), indexing="ij")
    keep = k <= l
    g, k, a, l = g[keep], k[keep], a[keep], l[keep]
    flat = lambda g_, k_, a_, l_: ((g_ * d + k_) * d + a_) * d + l_  # noqa: E731
    i1, i2 = flat(g, k, a, l), flat(g, l, a, k)
    diag = k == l
    half = torch.full(diag.shape, math.sqrt(0.5), dtype=torch.float64)
    w1 = torch.where(diag, torch.ones_like(half), half)
    w2 = torch.where(diag, torch.zeros_like(half), half)
    return _Basis(P * d**3, i1, i2, w1, w2)


def _basis_for(head, reduce: bool) -> _Basis:
    P, p, q = head.variable_shape()
    D = P * p * q // head.c
    if reduce and head.name in SYMMETRIC_HEADS:
        return symmetric_basis(P, head.d)
    return _Basis(D)


def system_size(head, n: int, reduce: bool = True) -> tuple[int, int]:
    """``(order, features)`` for ``n`` samples (``mode="auto"``): the order of the matrix ``admm``
    factorises (the reduced dimension ``r`` for the Gram step when ``n >= r``, else ``n`` for the
    Woodbury step) and the number of feature entries the Woodbury step keeps (``n r``; 0 for Gram)."""
    P, p, q = head.variable_shape()
    r = P * head.d**2 * (head.d + 1) // 2 if reduce and head.name in SYMMETRIC_HEADS else P * p * q // head.c
    return (r, 0) if n >= r else (n, n * r)


def reduced_features(op: ChunkedOperator, basis: _Basis, feats: dict) -> Tensor:
    """``Phi_r = Phi Q (n_chunk, r)``: column ``j`` is ``A`` applied to basis vector ``Q e_j`` placed
    in one output channel; ``c`` columns per ``apply`` (one per channel)."""
    head, c = op.head, op.c
    if basis.identity:
        Phi = head.channel_features(feats)
        if Phi is not None:
            return Phi.to(dtype=op.dtype, device=op.device)
    shape = head.variable_shape()
    n = next(iter(feats.values())).shape[0]
    out = torch.empty(n, basis.r, dtype=op.dtype, device=op.device)
    for j0 in range(0, basis.r, c):
        m = min(c, basis.r - j0)
        E = torch.zeros(basis.r, c, dtype=op.dtype, device=op.device)
        E[torch.arange(j0, j0 + m), torch.arange(m)] = 1.0
        out[:, j0 : j0 + m] = head.apply(basis.up(E).reshape(shape), feats)[:, :m]
    return out


class LeastSquaresStats:
    """Statistics of ``1/2 ||A Z - Y||^2`` in the reduced basis and the factorised step.

    ``mode="gram"`` keeps ``K_r = Phi_r^T Phi_r`` (``r x r``, streamed);
    ``mode="woodbury"`` keeps ``Phi_r`` (``n x r``) and factorises ``Phi_r Phi_r^T + rho I``.
    Always kept: ``AtY_r = Phi_r^T Y (r, c)`` and ``yy = ||Y||^2``.
    """

    def __init__(self, op: ChunkedOperator, Y: Tensor, basis: _Basis, mode: str) -> None:
        self.basis, self.mode, self.op = basis, mode, op
        r, c = basis.r, op.c
        self.AtY_r = torch.zeros(r, c, dtype=op.dtype, device=op.device)
        self.yy = float((Y**2).sum())
        self.K_r = torch.zeros(r, r, dtype=op.dtype, device=op.device) if mode == "gram" else None
        parts = []
        for a, b, feats in op.chunks():
            Phi = reduced_features(op, basis, feats)
            self.AtY_r += Phi.T @ Y[a:b]
            if mode == "gram":
                self.K_r += Phi.T @ Phi
            else:
                parts.append(Phi)
        self.Phi_r = torch.cat(parts) if mode == "woodbury" else None
        self.Y = Y if mode == "woodbury" else None
        self.M = self.Phi_r @ self.Phi_r.T if mode == "woodbury" else None
        self.AtY = basis.up(self.AtY_r)
        self.rho = None
        self.factorisations = 0

    def _cholesky(self, rho: float) -> Tensor:
        base = self.K_r if self.mode == "gram" else self.M
        eye = torch.eye(base.shape[0], dtype=base.dtype, device=base.device)
        self.factorisations += 1
        return torch.linalg.cholesky(base + rho * eye)

    def factor(self, rho: float) -> None:
        """Cholesky factor of ``K_r + rho I`` (gram) or ``Phi_r Phi_r^T + rho I`` (woodbury)."""
        self.L = self._cholesky(rho)
        self.rho = rho

    def _solve_reduced(self, br: Tensor, L: Tensor, rho: float) -> Tensor:
        """``(K_r + rho I)^{-1} br`` with the factor ``L`` of the matching matrix."""
        if self.mode == "gram":
            return torch.cholesky_solve(br, L)
        t = torch.cholesky_solve(self.Phi_r @ br, L)
        return (br - self.Phi_r.T @ t) / rho

    def solve(self, b: Tensor) -> Tensor:
        """``(A^*A + rho I)^{-1} b`` for ``b (D, c)`` (see module docstring)."""
        rho, Q = self.rho, self.basis
        br = Q.down(b)
        xr = self._solve_reduced(br, self.L, rho)
        if Q.identity:
            return xr
        return Q.up(xr) + (b - Q.up(br)) / rho

    def gram_apply(self, V: Tensor) -> Tensor:
        """``A^*A V`` for ``V (D, c)`` from the statistics."""
        Vr = self.basis.down(V)
        KV = self.K_r @ Vr if self.mode == "gram" else self.Phi_r.T @ (self.Phi_r @ Vr)
        return self.basis.up(KV)

    def preimage(self, G: Tensor, delta: float) -> Tensor | None:
        """``V = Q (K_r + delta I)^{-1} Q^T (G + A^*Y)``, so ``A^*(A V - Y) ≈ G`` (small ridge ``delta``).

        Among all ``lam = A V - Y`` with ``A^* lam = G`` this is the one with the largest dual value
        ``-F*(lam) = ||Y||^2/2 - ||A V||^2/2``.  ``None`` if the ridge matrix is numerically singular.
        """
        if getattr(self, "_delta", None) != delta:
            base = self.K_r if self.mode == "gram" else self.M
            eye = torch.eye(base.shape[0], dtype=base.dtype, device=base.device)
            L, info = torch.linalg.cholesky_ex(base + delta * eye)
            self.L_aux, self._delta = (L if int(info) == 0 else None), delta
        if self.L_aux is None:
            return None
        br = self.basis.down(G) + self.AtY_r
        return self.basis.up(self._solve_reduced(br, self.L_aux, delta))

    def residual_stats(self, V: Tensor) -> tuple[float, float, Tensor]:
        """For ``lam = A V - Y``: ``(||lam||^2, <lam, Y>, A^* lam (D, c))``."""
        Vr = self.basis.down(V)
        if self.mode == "gram":
            KV = self.K_r @ Vr
            lin = float((Vr * self.AtY_r).sum())
            aa = max(float((Vr * KV).sum()) - 2.0 * lin + self.yy, 0.0)
            return aa, lin - self.yy, self.basis.up(KV - self.AtY_r)
        AV = self.Phi_r @ Vr
        lam = AV - self.Y
        return float((lam**2).sum()), float((lam * self.Y).sum()), self.basis.up(self.Phi_r.T @ lam)


def clip_spectral(G: Tensor, beta: float) -> Tensor:
    """Projection of every block of ``G (P, p, q)`` onto ``{||G_g||_2 <= beta}`` (clip singular values)."""
    if min(G.shape[1], G.shape[2]) == 1:
        nrm = torch.linalg.vector_norm(G.flatten(1), dim=1).clamp_min(1e-300)
        return G * torch.clamp(beta / nrm, max=1.0)[:, None, None]
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    return (U * S.clamp(max=beta)[:, None, :]) @ Vh


def _squared_dual(aa: float, ly: float, theta_max: float) -> float:
    """``max_{0<=theta<=theta_max} -theta^2/2 ||lam||^2 - theta <lam, Y>`` (closed form)."""
    theta = 0.0 if aa <= 0 else min(max(-ly / aa, 0.0), theta_max)
    return -0.5 * theta * theta * aa - theta * ly


def admm(
    head,
    X: Tensor,
    Y: Tensor,
    loss: Loss,
    beta: float,
    *,
    tol: float = 1e-4,
    max_iter: int = 20000,
    max_time: float | None = None,
    Z0: Tensor | None = None,
    check_every: int = 10,
    rho: float | None = None,
    alpha: float = 1.0,
    mode: str = "auto",
    reduce: bool = True,
    balance_every: int = 5,
    balance_mu: float = 3.0,
    balance_tau: float = 2.0,
    max_rho_updates: int = 50,
    max_dim: int = MAX_DIM,
    dual_ridge: float = 1e-8,
    op: ChunkedOperator | None = None,
    chunk_size: int = 4096,
    verbose: bool = False,
    callback=None,
) -> SolveResult:
    """ADMM for a squared-loss convex head to certified relative duality gap ``tol`` (module docstring).

    ``head`` must be set up (``head.setup(d, c, ...)``) and ``Y (n, c)`` float targets.
    ``mode``: ``"gram"`` (factorise the reduced ``r x r`` Gram), ``"woodbury"`` (factorise
    ``n x n``) or ``"auto"`` (Gram when ``n >= r``).  ``rho``: initial penalty (default
    ``trace(K) / D``); ``alpha``: over-relaxation in ``(0, 2)``.  Residual balancing every
    ``balance_every`` iterations: ``rho`` times/divided by ``balance_tau`` when one residual
    exceeds ``balance_mu`` times the other (at most ``max_rho_updates`` changes).
    ``check_every``: iterations between certificates.  ``dual_ridge``: relative ridge of the
    projected dual candidate (``0`` turns it off).  ``max_dim``: largest matrix to factorise
    (else ``ValueError``).  ``op``: an existing :class:`ChunkedOperator` for ``head`` on ``X``
    (reused instead of recomputing features).
    """
    t_start = time.perf_counter()
    if loss.name != "squared":
        raise ValueError(f"admm solves squared-loss problems only (exact least-squares step), got loss "
                         f"{loss.name!r}; use solver='fista' for {loss.name!r}")
    if head.name not in ADMM_HEADS:
        raise ValueError(f"admm supports heads {ADMM_HEADS}, got {head.name!r}; use solver='fista'")
    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol}")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    for name, val in (("check_every", check_every), ("balance_every", balance_every)):
        if not (isinstance(val, int) and val >= 1):
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if not (0.0 < alpha < 2.0):
        raise ValueError(f"alpha (over-relaxation) must lie in (0, 2), got {alpha}")
    if mode not in ("auto", "gram", "woodbury"):
        raise ValueError(f"mode must be 'auto', 'gram' or 'woodbury', got {mode!r}")
    if not (dual_ridge >= 0 and math.isfinite(dual_ridge)):
        raise ValueError(f"dual_ridge must be a finite number >= 0, got {dual_ridge}")
    if rho is not None and not (rho > 0 and math.isfinite(rho)):
        raise ValueError(f"rho must be a finite number > 0, got {rho}")
    if op is None:
        op = ChunkedOperator(head, X, chunk_size=chunk_size)
    if not torch.is_floating_point(Y) or Y.shape != (op.n, op.c):
        raise ValueError(f"Y must be float targets of shape (n, c) = ({op.n}, {op.c}), got "
                         f"{tuple(Y.shape)} {Y.dtype}")
    shape = head.variable_shape()
    c = op.c
    basis = _basis_for(head, reduce).to(op.dtype, op.device)
    if mode == "auto":
        mode = "gram" if op.n >= basis.r else "woodbury"
    size = basis.r if mode == "gram" else op.n
    if size > max_dim:
        raise ValueError(f"admm would factorise a {size} x {size} matrix (mode={mode!r}, n={op.n}, reduced "
                         f"dimension r={basis.r} > max_dim={max_dim}); use solver='fista' for this size "
                         f"or raise max_dim")
    stats = LeastSquaresStats(op, Y, basis, mode)
    _check_separable(op, stats, shape)
    setup_time = time.perf_counter() - t_start

    D = basis.D
    if Z0 is None:
        W = torch.zeros(D, c, dtype=op.dtype, device=op.device)
    else:
        if tuple(Z0.shape) != tuple(shape):
            raise ValueError(f"Z0 must have shape {shape}, got {tuple(Z0.shape)}")
        W = Z0.to(dtype=op.dtype, device=op.device).reshape(D, c).clone()
    trace = float(torch.diagonal(stats.K_r).sum()) if mode == "gram" else float(torch.diagonal(stats.M).sum())
    scale = max(trace / D, 1e-300)  # mean eigenvalue of A^*A per channel
    if rho is None:
        rho = scale
    stats.factor(rho)
    U = torch.zeros_like(W)
    if Z0 is not None:  # start the dual at the KKT guess rho U = -A^*(A Z0 - Y), scaled to R° <= beta
        _, _, Atlam = stats.residual_stats(W)
        nrm = float(head.dual_norm(Atlam.reshape(shape)))
        U = -Atlam * (min(1.0, beta / nrm) if nrm > 0 else 0.0) / rho

    best_primal, best_dual = math.inf, -math.inf
    best_W = W.reshape(shape).clone()
    best_lam_V = None
    history: list[dict] = []
    status = "max_iter"
    gap = rel = math.inf
    rho_updates = 0
    recertified = 0
    bar = tqdm(total=max_iter, disable=not verbose, desc="admm", leave=False)
    it = 0
    start_iter = 1
    if Z0 is not None:  # a warm start that is already certified (e.g. a resumed path) needs no iteration
        cert = _recertify(head, op, loss, Y, beta, best_W, None)
        recertified += 1
        if cert["rel_gap"] <= tol:
            status, start_iter = "optimal", max_iter + 1
            gap, rel = cert["gap"], cert["rel_gap"]
    for it in range(start_iter, max_iter + 1):
        Z = stats.solve(stats.AtY + rho * (W - U))
        W_old = W
        Zh = alpha * Z + (1.0 - alpha) * W_old
        Wt, RW = head.prox((Zh + U).reshape(shape), beta / rho, return_penalty=True)
        W = Wt.reshape(D, c)
        U = U + Zh - W
        bar.update(1)
        r_norm = s_norm = None
        # a warm start is also checked after its first step, whose least-squares iterate gives the dual point
        check = it % check_every == 0 or it == max_iter or (Z0 is not None and it == 1)
        if it % balance_every == 0 or check:
            r_norm = float((Z - W).norm())
            s_norm = rho * float((W - W_old).norm())
        if check:
            # ---- certificate (cheap, from the statistics)
            aa_w, ly_w, At_w = stats.residual_stats(W)
            primal = 0.5 * aa_w + beta * float(RW)
            if primal < best_primal:
                best_primal, best_W = primal, W.reshape(shape).clone()
            cands = [(W, aa_w, ly_w, At_w), (Z, *stats.residual_stats(Z))]
            if dual_ridge > 0:  # A^* lam_Z projected onto the dual ball, mapped back to a dual point
                Vg = stats.preimage(clip_spectral(cands[1][3].reshape(shape), beta).reshape(D, c),
                                    dual_ridge * scale)
                if Vg is not None:
                    cands.append((Vg, *stats.residual_stats(Vg)))
            for V, aa, ly, At in cands:
                nrm = float(head.dual_norm(At.reshape(shape)))
                dual = _squared_dual(aa, ly, math.inf if nrm == 0 else beta / nrm)
                if dual > best_dual:
                    best_dual, best_lam_V = dual, V.clone()
            gap = max(best_primal - best_dual, 0.0)
            rel = relative_gap(gap, best_primal)
            elapsed = time.perf_counter() - t_start
            history.append({"iter": it, "time": elapsed, "primal": primal, "best_primal": best_primal,
                            "dual": best_dual, "gap": gap, "rel_gap": rel, "rho": rho,
                            "primal_residual": r_norm, "dual_residual": s_norm})
            if verbose:
                bar.set_postfix(obj=f"{best_primal:.6g}", rel_gap=f"{rel:.2e}", rho=f"{rho:.2g}")
            if callback is not None:
                callback(history[-1])
            if rel <= tol:
                cert = _recertify(head, op, loss, Y, beta, best_W, best_lam_V)
                recertified += 1
                history[-1]["certified_rel_gap"] = cert["rel_gap"]
                if cert["rel_gap"] <= tol:
                    status = "optimal"
                    break
            if max_time is not None and elapsed >= max_time:
                status = "max_time"
                break
        # ---- residual balancing (refactorise only when rho changes)
        if r_norm is not None and rho_updates < max_rho_updates and (
                r_norm > balance_mu * s_norm or s_norm > balance_mu * r_norm):
            factor = balance_tau if r_norm > s_norm else 1.0 / balance_tau
            rho *= factor
            U = U / factor
            stats.factor(rho)
            rho_updates += 1
    bar.close()
    if status != "optimal":  # the reported certificate is always the independent one
        cert = _recertify(head, op, loss, Y, beta, best_W, best_lam_V)
        if cert["rel_gap"] <= tol:
            status = "optimal"
    return SolveResult(
        Z=best_W, objective=cert["primal"], dual_objective=cert["dual"], gap=cert["gap"],
        rel_gap=cert["rel_gap"], iterations=it, time=time.perf_counter() - t_start, status=status,
        solver="admm", history=history,
        info={"rho": rho, "rho_updates": rho_updates, "factorisations": stats.factorisations, "mode": mode,
              "reduced_dim": basis.r, "full_dim": D, "check_every": check_every, "setup_time": setup_time,
              "recertifications": recertified, "estimated_rel_gap": rel},
        lam=cert["lam"],
    )


def _recertify(head, op, loss, Y, beta, Z: Tensor, lam_V: Tensor | None) -> dict:
    """Independent certificate on the head's operator at ``Z``, with the extra dual point ``A V - Y``."""
    shape = head.variable_shape()
    lam = None if lam_V is None else op.forward(lam_V.reshape(shape)) - Y
    cert = certificate(head, op, loss, Y, beta, Z, lam=lam)
    cert["lam"] = lam
    return cert


def _check_separable(op: ChunkedOperator, stats: LeastSquaresStats, shape) -> None:
    """``A^*A V`` from the statistics must match the head's own ``A^*(A V)`` on a random ``V``."""
    gen = torch.Generator().manual_seed(1234)
    V = torch.randn(stats.basis.D, op.c, generator=gen, dtype=torch.float64).to(op.dtype).to(op.device)
    At = stats.gram_apply(V)
    ref = op.adjoint(op.forward(V.reshape(shape))).reshape_as(At)
    err = float((At - ref).norm()) / max(float(ref.norm()), 1e-300)
    lim = 1e-10 if op.dtype == torch.float64 else 1e-4
    if not err <= lim:
        raise ValueError(f"admm: head {op.head.name!r} is not channel separable in the expected layout "
                         f"(relative mismatch {err:.1e}); use solver='fista'")
