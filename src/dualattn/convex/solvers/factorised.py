"""Matrix-free Burer-Monteiro solver with rank growth and a duality-gap certificate.

Sahiner et al. (ICLR 2024, "Scaling Convex Neural Networks with Burer-Monteiro
Factorization"): the convex program ``min_Z F(A_X Z) + beta sum_g ||Z_g||_*`` is
solved over factors ``Z_g = A_g B_g^T`` (``A (P, p, r)``, ``B (P, q, r)``: exactly
the nonconvex heads' weights) through the variational form of the nuclear norm,

    min_{A, B}  Phi(A, B) = F(A_X(A B^T)) + beta/2 (||A||_F^2 + ||B||_F^2),

evaluated with the head's own forward pass (:meth:`ConvexHead.factored_apply`;
the ``d^2 x dc`` matrix is never formed).  Outer iteration:

1. L-BFGS (strong-Wolfe line search, full batch, chunked over samples) on
   ``Phi`` at fixed rank, then rebalancing ``A_g = U sqrt(S)``, ``B_g = V sqrt(S)``
   from the QR cores (:mod:`dualattn.convex.lowrank`), which also drops zero columns.
2. ``lam = grad F(A_X Z)`` and ``M = A_X^*(lam)`` applied to vectors only
   (:meth:`ConvexHead.adjoint_matmul` / ``adjoint_rmatmul``); a short Lanczos run
   estimates the top singular triples ``(sigma, u, v)`` of every block of ``M``.
   ``Z`` is optimal iff ``-M in beta d||Z||_*``; a stationary point of ``Phi``
   already satisfies this on the span of the factors, so it is optimal iff
   ``max sigma <= beta``.
3. Certificate: primal ``P(Z) = F + beta sum_g ||Z_g||_*`` (nuclear norm exact from
   the QR cores) and dual ``D(theta lam)`` with ``theta <= beta / rho``, where
   ``rho`` is a *valid upper bound* on ``max_g ||M_g||_2`` (dense or full-Krylov
   when small, else Lanczos with the Kuczyński-Woźniakowski probabilistic bound,
   see :mod:`dualattn.convex.lanczos`).  It is computed only when the estimated
   gap (with the Lanczos estimate of ``rho``) is already below ``tol``.  Status
   ``"optimal"`` means certified: ``(best primal - best dual) / |best primal| <= tol``.
4. Rank growth: if ``sigma_g > beta (1 + grow_tol)`` for a pair whose ``v`` lies mostly
   outside the row space of ``Z_g`` (inside it, an excess only means L-BFGS is not done), the direction
   ``-sum_j (sigma_j - beta) u_j v_j^T`` (top Ritz pairs of the violating blocks,
   at most ``grow`` per block) decreases ``P`` at rate ``sum (sigma_j - beta)^2``;
   a step ``t`` (exact 1-D search on the outputs, which are linear in ``t``) is
   appended as new balanced columns ``(sqrt(t c_j) u_j, -sqrt(t c_j) v_j)``.

Data parallel (``comm`` active, see :mod:`dualattn.convex.distributed`): each
process holds a shard of the samples; values, gradients, ``M`` products and the
certificate sums are all-reduced, so every process holds identical factors.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dualattn.convex import lowrank
from dualattn.convex.distributed import Comm
from dualattn.convex.heads.base import ConvexHead
from dualattn.convex.lanczos import BlockOperator
from dualattn.convex.losses import Loss
from dualattn.convex.solvers import subspace
from dualattn.convex.solvers.result import SolveResult, relative_gap

#: default ``grow``: columns added per block by one rank-growth step
GROW = 16


class FactoredOperator:
    """``A_X`` of ``head`` on the (local) samples ``X``, evaluated from factors, ``chunk_size`` samples at a time."""

    def __init__(self, head: ConvexHead, X: Tensor, *, chunk_size: int = 256, comm: Comm | None = None) -> None:
        if not (isinstance(chunk_size, int) and chunk_size > 0):
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        head.check_X(X)
        self.head, self.comm = head, comm or Comm()
        self.n = int(X.shape[0])
        self.c = int(head.c)
        self.dtype, self.device = head.dtype, head.device
        self.shape = tuple(int(v) for v in head.variable_shape())
        self.bounds = [(i, min(i + chunk_size, self.n)) for i in range(0, self.n, chunk_size)]
        self.feats = [head.factored_features(X[a:b]) for a, b in self.bounds]

    def forward(self, A: Tensor, B: Tensor) -> Tensor:
        """Local outputs ``A_X(A B^T)`` ``(n_local, c)`` (no autograd)."""
        if A.shape[2] == 0:
            return torch.zeros(self.n, self.c, dtype=self.dtype, device=self.device)
        with torch.no_grad():
            return torch.cat([self.head.factored_apply(A, B, f) for f in self.feats])

    def value_grad(self, A: Tensor, B: Tensor, loss: Loss, Y: Tensor) -> tuple[float, Tensor, Tensor]:
        """Global ``F(A_X(A B^T))`` and its gradients in ``A``, ``B`` (chunked backward, all-reduced)."""
        gA, gB = torch.zeros_like(A), torch.zeros_like(B)
        f = torch.zeros((), dtype=self.dtype, device=self.device)
        for (a, b), feats in zip(self.bounds, self.feats):
            out, vjp = self.head.factored_vjp(A.detach(), B.detach(), feats)
            val, lam = loss.value_grad(out, Y[a:b])
            ga, gb = vjp(lam)
            f += val
            gA += ga
            gB += gb
        packed = torch.cat([f.reshape(1), gA.reshape(-1), gB.reshape(-1)])
        self.comm.sum_(packed)
        nA = gA.numel()
        return float(packed[0]), packed[1 : 1 + nA].reshape(A.shape), packed[1 + nA :].reshape(B.shape)

    def adjoint_operator(self, lam: Tensor) -> BlockOperator:
        """``M = A_X^*(lam)`` (global over processes) as a :class:`BlockOperator` of products."""
        head, comm = self.head, self.comm

        def matmul(W: Tensor) -> Tensor:
            out = sum(head.adjoint_matmul(lam[a:b], W, f) for (a, b), f in zip(self.bounds, self.feats))
            return comm.sum_(out)

        def rmatmul(U: Tensor) -> Tensor:
            out = sum(head.adjoint_rmatmul(lam[a:b], U, f) for (a, b), f in zip(self.bounds, self.feats))
            return comm.sum_(out)

        return BlockOperator(self.shape, matmul, rmatmul, dtype=self.dtype, device=self.device)


def global_dual_value(loss: Loss, lam: Tensor, Y: Tensor, theta_max: float, comm: Comm) -> float:
    """``-F*(theta lam)`` summed over processes with the best *global* ``theta`` in ``[0, theta_max]``."""
    if not comm.active:
        return float(loss.dual_value(lam, Y, theta_max)[0])
    if loss.name == "squared":  # theta = clip(-<lam, Y> / ||lam||^2, 0, theta_max) needs global sums
        ab = comm.sum(torch.stack([(lam**2).sum(), (lam * Y).sum()]).to(torch.float64))
        a, b = float(ab[0]), float(ab[1])
        theta = 0.0 if a <= 0 else min(max(-b / a, 0.0), theta_max)
        return -0.5 * theta**2 * a - theta * b
    if loss.name == "cross_entropy":  # theta = min(theta_max, 1) is global already; the value is a sum
        return comm.sum(float(loss.dual_value(lam, Y, theta_max)[0]))
    raise ValueError(f"distributed certificates support the squared and cross-entropy losses, got {loss.name!r}")


def certify_factors(op: FactoredOperator, loss: Loss, Y: Tensor, beta: float, A: Tensor, B: Tensor, *,
                    eps: float = 2.5e-5, delta: float = 1e-6, dense_bytes: float = 2**28, seed: int = 0) -> dict:
    """Primal value of ``Z = A B^T``, dual value of the scaled point ``theta grad F`` with a valid
    norm bound (:meth:`BlockOperator.norm_bound`), gap and relative gap."""
    out = op.forward(A, B)
    fval, lam = loss.value_grad(out, Y)
    primal = op.comm.sum(float(fval)) + beta * float(lowrank.nuclear_norm(A, B))
    nb = op.adjoint_operator(lam).norm_bound(eps=eps, delta=delta, seed=seed, dense_bytes=dense_bytes)
    rho = float(nb.bound.max())
    dual = global_dual_value(loss, lam, Y, beta / rho if rho > 0 else math.inf, op.comm)
    gap = max(primal - dual, 0.0)
    return {"primal": primal, "dual": dual, "gap": gap, "rel_gap": relative_gap(gap, primal), "lam": lam,
            "norm_method": nb.method, "certificate": "deterministic" if nb.deterministic
            else f"probabilistic (failure probability <= {nb.delta:g})"}


def _initial_factors(Z0, shape, dtype, device) -> tuple[Tensor, Tensor]:
    P, p, q = shape
    if Z0 is None:
        return torch.zeros(P, p, 0, dtype=dtype, device=device), torch.zeros(P, q, 0, dtype=dtype, device=device)
    if isinstance(Z0, (tuple, list)):
        A, B = (t.to(dtype=dtype, device=device) for t in Z0)
        if A.ndim != 3 or B.ndim != 3 or tuple(A.shape[:2]) != (P, p) or tuple(B.shape[:2]) != (P, q) \
                or A.shape[2] != B.shape[2]:
            raise ValueError(f"Z0 factors must be A (P={P}, p={p}, r) and B (P, q={q}, r), "
                             f"got {tuple(A.shape)} and {tuple(B.shape)}")
        return lowrank.compress(A, B, min_rank=0)
    if tuple(Z0.shape) != tuple(shape):
        raise ValueError(f"Z0 must have shape {shape} (or be factors (A, B)), got {tuple(Z0.shape)}")
    U, S, Vh = torch.linalg.svd(Z0.to(dtype=dtype, device=device), full_matrices=False)
    keep = S > 1e-12 * S.max().clamp_min(torch.finfo(dtype).tiny)
    r = int(keep.sum(dim=1).max())
    root = (S[:, :r] * keep[:, :r]).sqrt()
    return U[:, :, :r] * root[:, None], Vh[:, :r].transpose(1, 2) * root[:, None]


def factorised(
    head: ConvexHead,
    X: Tensor,
    loss: Loss,
    Y: Tensor,
    beta: float,
    *,
    Z0=None,
    tol: float = 1e-4,
    max_outer: int = 200,
    inner_iters: int = 20,
    max_rank: int | None = None,
    grow: int = GROW,
    grow_tol: float = 0.0,
    check_steps: int = 30,
    delta: float = 1e-6,
    norm_eps: float | None = None,
    dense_bytes: float = 2**28,
    history_size: int | None = None,
    lbfgs_memory_bytes: float = 2**30,
    chunk_size: int = 256,
    max_time: float | None = None,
    seed: int = 0,
    comm: Comm | None = None,
    verbose: bool = False,
    final_certificate: bool = True,
    polish: bool | str = "auto",
    polish_max_vars: int = 2500,
    polish_steps: int = 10,
    polish_trigger: float = 1e-3,
    polish_bytes: float = 2**30,
) -> SolveResult:
    """Solve the head's program over factors ``Z_g = A_g B_g^T`` to a certified relative gap ``tol``.

    See the module docstring.  ``X``, ``Y`` are this process's shard when
    ``torch.distributed`` is initialised (``comm``).  ``Z0``: dense ``Z`` or factors
    ``(A, B)`` (warm start).  ``delta``: failure probability of the Lanczos norm
    bound when it is not exact; ``norm_eps``: its relative slack (default ``tol / 4``).
    ``final_certificate``: a solve stopped by ``max_time`` / ``max_outer`` certifies its best point once
    before returning (a valid gap instead of ``inf``; may run past ``max_time`` by that one bound).
    ``polish``: after an L-BFGS stage that follows one which lowered the objective by less than
    ``polish_trigger`` (relative), up to ``polish_steps`` proximal Newton steps on the core
    ``M`` of ``Z_g = Q_a M_g Q_b^T`` (:mod:`~dualattn.convex.solvers.subspace`); ``"auto"`` does so
    when the loss is squared or cross-entropy, the core has at most ``polish_max_vars`` variables
    (``P r^2``) and one step needs at most ``polish_bytes``; ``True`` raises if it cannot.
    Returns a :class:`SolveResult` with ``Z=None`` and ``factors=(A, B)``.
    """
    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol}")
    for name, v in (("max_outer", max_outer), ("inner_iters", inner_iters), ("grow", grow),
                    ("check_steps", check_steps)):
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not (0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if polish not in (True, False, "auto"):
        raise ValueError(f"polish must be True, False or 'auto', got {polish!r}")
    if polish is True and loss.name not in subspace.SUPPORTED_LOSSES:
        raise ValueError(f"polish=True needs a loss in {subspace.SUPPORTED_LOSSES}, got {loss.name!r}")
    comm = comm or Comm()
    t0 = time.perf_counter()
    op = FactoredOperator(head, X, chunk_size=chunk_size, comm=comm)
    shape = op.shape
    P, p, q = shape
    dtype, device = op.dtype, op.device
    # blocks of lower rank carry zero columns, so the common r may exceed min(p, q)
    max_rank = P * min(p, q) if max_rank is None else int(max_rank)
    norm_eps = tol / 4 if norm_eps is None else float(norm_eps)
    A, B = _initial_factors(Z0, shape, dtype, device)

    best = {"primal": math.inf, "A": A, "B": B}
    best_dual, best_lam = -math.inf, None
    history: list[dict] = []
    status, evals, certs, grown, polished = "max_iter", 0, 0, 0, 0
    cert_info: dict = {}
    rel = gap = math.inf
    bar = tqdm(total=max_outer, disable=not verbose, desc="factorised", leave=False)

    lbfgs, warm = None, None
    prev_primal = math.inf
    for outer in range(1, max_outer + 1):
        # ---- 1. L-BFGS at fixed rank (its memory is kept until the rank changes)
        if A.shape[2] > 0:
            if lbfgs is None:
                lbfgs = _LBFGS(op, loss, Y, beta, A, B, history_size, lbfgs_memory_bytes)
            deadline = None if max_time is None else t0 + max_time
            A, B, n_eval = lbfgs.run(inner_iters, deadline)
            evals += n_eval
        # ---- 2. primal value, dual direction, top singular triples of M = A^*(lam)
        out = op.forward(A, B)
        fval, lam = loss.value_grad(out, Y)
        fval = comm.sum(float(fval))
        primal = fval + beta * float(lowrank.nuclear_norm(A, B))
        # the L-BFGS stage has stalled (polish next time) when it gained < polish_trigger (relative)
        stalled = prev_primal - primal <= polish_trigger * abs(primal)
        prev_primal = primal
        if primal < best["primal"]:
            best = {"primal": primal, "A": A, "B": B}
        M = op.adjoint_operator(lam)
        k_est = min(check_steps, M.small_side)
        sig, Uv, Vv = M.top_pairs(k_est, num=grow, seed=seed + outer, start=warm)
        warm = (Uv[:, :, 0], Vv[:, :, 0])  # the top pair moves little between outer iterations
        sig_max = float(sig[:, 0].max())
        est_dual = global_dual_value(loss, lam, Y, beta / sig_max if sig_max > 0 else math.inf, comm)
        est_rel = relative_gap(max(best["primal"] - max(est_dual, best_dual), 0.0), best["primal"])
        # ---- 3. certificate (valid bound) once the estimate says we are done
        certified_now = False
        if est_rel <= tol or sig_max == 0.0:
            nb = M.norm_bound(eps=norm_eps, delta=delta, seed=seed + 10_000 + outer, dense_bytes=dense_bytes)
            certs += 1
            rho = float(nb.bound.max())
            dval = global_dual_value(loss, lam, Y, beta / rho if rho > 0 else math.inf, comm)
            if dval > best_dual:
                best_dual, best_lam = dval, lam
                cert_info = {"norm_method": nb.method, "norm_steps": nb.steps, "norm_eps": nb.eps,
                             "norm_delta": nb.delta, "certificate": "deterministic" if nb.deterministic
                             else f"probabilistic (failure probability <= {nb.delta:g})"}
            certified_now = True
        gap = max(best["primal"] - best_dual, 0.0)
        rel = relative_gap(gap, best["primal"])
        elapsed = time.perf_counter() - t0
        history.append({"outer": outer, "evals": evals, "time": elapsed, "rank": int(A.shape[2]),
                        "primal": primal, "best_primal": best["primal"], "dual": best_dual, "gap": gap,
                        "rel_gap": rel, "est_rel_gap": est_rel, "sigma_max": sig_max, "certified": certified_now})
        bar.update(1)
        bar.set_postfix(obj=f"{best['primal']:.6g}", rank=A.shape[2], rel_gap=f"{min(rel, est_rel):.1e}")
        if rel <= tol:
            status = "optimal"
            break
        if max_time is not None and elapsed >= max_time:
            status = "max_time"
            break
        # ---- 4. rank growth along the violating top singular pairs
        over = sig > beta * (1 + grow_tol)
        viol = over & (_off_span(B, Vv) > 0.5)
        k_new = int(over.sum(dim=1).max())
        if polish and stalled and _can_polish(polish, loss, A.shape[2] + k_new, op, polish_max_vars, polish_bytes):
            # fully corrective step: the exact optimum over the spans of the factors and the violating pairs
            A, B, pinfo = subspace.polish_core(op, loss, Y, beta, A, B, extra=(Uv[:, :, :k_new], Vv[:, :, :k_new]),
                                               steps=polish_steps,
                                               deadline=None if max_time is None else t0 + max_time)
            polished += pinfo["steps"]
            lbfgs = None  # the point and usually the rank changed: the curvature pairs are stale
        elif viol.any() and A.shape[2] < max_rank:
            A, B = lowrank.compress(A, B, min_rank=0)  # rebalance, drop zero columns
            A, B = _grow(op, loss, Y, beta, A, B, out, sig, Uv, Vv, viol, max_rank)
            grown += 1
            lbfgs = None

    bar.close()
    if status != "optimal" and final_certificate:
        # stopped at a cap: certify the best point once, so the result reports the gap it has
        cert = certify_factors(op, loss, Y, beta, best["A"], best["B"], eps=norm_eps, delta=delta,
                               dense_bytes=dense_bytes, seed=seed + 20_000)
        certs += 1
        if cert["dual"] > best_dual:
            best_dual, best_lam = cert["dual"], cert["lam"]
            cert_info = {"norm_method": cert["norm_method"], "certificate": cert["certificate"]}
        gap = max(best["primal"] - best_dual, 0.0)
        rel = relative_gap(gap, best["primal"])
        cert_info["final_certificate"] = True
    A, B = lowrank.compress(best["A"], best["B"], min_rank=0)
    info = {"rank": int(A.shape[2]), "evals": evals, "certificates": certs, "growth_steps": grown,
            "newton_steps": polished,
            "world_size": comm.world_size, **cert_info}
    return SolveResult(
        Z=None, objective=best["primal"], dual_objective=best_dual, gap=gap, rel_gap=rel,
        iterations=len(history), time=time.perf_counter() - t0, status=status, solver="factorised",
        history=history, info=info, lam=best_lam, factors=(A, B),
    )


def _can_polish(polish, loss: Loss, r: int, op: FactoredOperator, max_vars: int, max_bytes: float) -> bool:
    """Whether the core Newton polish on ``r`` columns runs now (``polish=True`` raises when it cannot)."""
    P, p, q = op.shape
    r_core = min(p, r)
    nvars = P * r_core * min(q, r)
    chunk = max(b - a for a, b in op.bounds) if op.bounds else 0
    need = subspace.core_bytes(P, max(r_core, 1), chunk, op.c, torch.finfo(op.dtype).bits // 8)
    if loss.name in subspace.SUPPORTED_LOSSES and nvars <= max_vars and need <= max_bytes:
        return True
    if polish is True:
        raise ValueError(f"polish=True: the core has {nvars} variables (polish_max_vars={max_vars}) and needs "
                         f"{need / 2**20:.0f} MiB (polish_bytes={max_bytes / 2**20:.0f} MiB); raise them or use polish='auto'")
    return False


class _Timeout(Exception):
    """Raised inside the L-BFGS closure at the deadline (the last evaluated point is kept)."""


class _LBFGS:
    """``torch.optim.LBFGS`` (strong Wolfe) on ``Phi(A, B)`` with a chunked, all-reduced closure."""

    def __init__(self, op: FactoredOperator, loss: Loss, Y: Tensor, beta: float, A: Tensor, B: Tensor,
                 history_size: int | None, memory_bytes: float) -> None:
        self.A = A.detach().clone().requires_grad_(True)
        self.B = B.detach().clone().requires_grad_(True)
        if history_size is None:  # two vectors of A.numel() + B.numel() per stored pair
            per_pair = 2 * (self.A.numel() + self.B.numel()) * self.A.element_size()
            history_size = int(min(20, max(3, memory_bytes // max(per_pair, 1))))
        self.history_size = history_size
        self.op, self.loss, self.Y, self.beta = op, loss, Y, beta
        self.count = 0
        self.deadline: float | None = None

    def closure(self):
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            raise _Timeout
        self.count += 1
        A, B = self.A, self.B
        f, gA, gB = self.op.value_grad(A, B, self.loss, self.Y)
        reg = 0.5 * float((A.detach() ** 2).sum() + (B.detach() ** 2).sum())
        A.grad = gA + self.beta * A.detach()
        B.grad = gB + self.beta * B.detach()
        return torch.tensor(f + self.beta * reg, dtype=torch.float64)

    def run(self, iters: int, deadline: float | None = None) -> tuple[Tensor, Tensor, int]:
        """``iters`` more iterations (a fresh optimizer each call would lose the curvature pairs);
        stops early at ``deadline`` (``time.perf_counter()``), keeping the last evaluated point."""
        self.deadline = deadline
        if not hasattr(self, "opt"):
            self.opt = torch.optim.LBFGS([self.A, self.B], lr=1.0, max_iter=iters, max_eval=int(iters * 1.5) + 5,
                                         history_size=self.history_size, tolerance_grad=0.0,
                                         tolerance_change=0.0, line_search_fn="strong_wolfe")
        before = self.count
        try:
            self.opt.step(self.closure)
            if self.opt.state[self.A]["n_iter"] - self.opt.state[self.A].get("_n0", 0) < iters:
                del self.opt  # stopped early (no descent direction): restart from steepest descent next time
            else:
                self.opt.state[self.A]["_n0"] = self.opt.state[self.A]["n_iter"]
        except _Timeout:
            del self.opt  # its state is mid line search
        return self.A.detach().clone(), self.B.detach().clone(), self.count - before


def _off_span(B: Tensor, V: Tensor) -> Tensor:
    """``||(I - Q_b Q_b^T) v_j||`` per block and vector: how much of ``v_j`` lies outside the row space of ``Z_g``.

    At a stationary point of ``Phi`` the singular values of ``M`` on the span of the factors
    equal ``beta``; an excess there means L-BFGS has not converged yet (no growth needed).
    """
    if B.shape[2] == 0:
        return torch.ones(V.shape[0], V.shape[2], dtype=V.dtype, device=V.device)
    Q, S, _ = torch.linalg.svd(B, full_matrices=False)  # zero (padding) columns span nothing
    Q = Q * (S > 1e-10 * S.amax(dim=1, keepdim=True).clamp_min(torch.finfo(S.dtype).tiny))[:, None, :]
    return (V - Q @ (Q.transpose(1, 2) @ V)).norm(dim=1)


def _grow(op: FactoredOperator, loss: Loss, Y: Tensor, beta: float, A: Tensor, B: Tensor, out: Tensor,
          sig: Tensor, U: Tensor, V: Tensor, viol: Tensor, max_rank: int) -> tuple[Tensor, Tensor]:
    """Append ``(sqrt(t c_j) u_j, -sqrt(t c_j) v_j)``, ``c_j = sigma_j - beta``, for the violating pairs."""
    room = max_rank - A.shape[2]
    per_block = viol.sum(dim=1)
    m = int(min(per_block.max(), room))
    coef = torch.where(viol, sig - beta, torch.zeros_like(sig))[:, :m]  # (P, m); 0 pads
    Un, Vn = U[:, :, :m] * coef.sqrt()[:, None], -V[:, :, :m] * coef.sqrt()[:, None]
    dout = op.forward(Un, Vn)  # outputs of the direction D = -sum c_j u_j v_j^T
    total = float(coef.sum())

    def phi(t: float) -> float:  # P along Z + t D (penalty of the new balanced columns = t sum c_j)
        return op.comm.sum(float(loss.value(out + t * dout, Y))) + beta * t * total

    curv = op.comm.sum(float((dout**2).sum())) * loss.smoothness
    slope = -float((coef * (sig[:, :m] - beta)).sum())
    t = -slope / curv if curv > 0 else 1.0
    f_t = phi(t)
    for _ in range(40):  # the descent-lemma step is safe; expand while it keeps decreasing
        f2 = phi(2 * t)
        if not f2 < f_t:
            break
        t, f_t = 2 * t, f2
    s = math.sqrt(t)
    return torch.cat([A, s * Un], dim=2), torch.cat([B, s * Vn], dim=2)


__all__ = ["FactoredOperator", "certify_factors", "factorised", "global_dual_value"]
