"""Cone decompositions: realise a gated neuron with two ReLU neurons.

A gated unit with gate ``h`` and first-layer weights ``w`` computes
``D ∘ (C_raw w)`` where ``D = 1{C_raw h >= 0}``.  With the sign-adjusted
constraint matrix ``C = diag(2D - 1) C_raw`` the cone of weights that induce
the same activation pattern is ``K = {w : C w >= 0}`` (``h`` lies in it), and for
``p, q in K``: ``D ∘ (C_raw (p - q)) = relu(C_raw p) - relu(C_raw q)``.
So ``w = p - q`` realises the gated unit with two ReLU units ``(p, v), (q, -v)``.

* :func:`closed_form_tau`: ``p = w + tau h``, ``q = tau h`` with the smallest
  feasible ``tau = max_r max(-(C w)_r, 0) / (C h)_r`` (streamed over data chunks).
* :func:`split_min_norm`: ``min ||p|| + ||q|| s.t. p - q = w, C p >= 0, C q >= 0``
  (one SOCP for all units, solved with Clarabel; the ReLU pair's weight decay after balancing is
  ``||v|| (||p|| + ||q||)``), falling back to the closed form if it fails or is too large.

Pre-activations on the data are produced chunk by chunk by
``pre_fn(X_chunk, W (m, k)) -> (r, m)`` (attention: the scores ``x_t^T W x_u`` by
einsum; MLP: ``x_t^T w``), so large data never materialises the ``n s^2`` rows;
the explicit rows ``rows_fn(X) -> (r, k)`` (attention: ``vec(x_t x_u^T)``; MLP:
``x_t``) are only formed for the (small) SOCP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor


Rows = Callable[[Tensor], Tensor]
PreActs = Callable[[Tensor, Tensor], Tensor]


def _chunked_margins(X: Tensor, pre_fn: PreActs, W: Tensor, H: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield signed margins ``sgn(pre(H)) * pre(W)`` and ``|pre(H)|`` (``(rows, m)``) chunk by chunk,
    with chunks of about 1e7 entries."""
    per_sample = max(1, pre_fn(X[:1], W[:1]).shape[0]) * max(1, W.shape[0])
    chunk = max(1, int(1e7 // per_sample))
    for a in range(0, X.shape[0], chunk):
        Xc = X[a : a + chunk]
        cw, ch = pre_fn(Xc, W), pre_fn(Xc, H)
        yield torch.where(ch >= 0, cw, -cw), ch.abs()


def rows_preacts(rows_fn: Rows) -> PreActs:
    """``pre_fn`` from explicit rows: ``rows_fn(Xc) @ W^T``."""
    return lambda Xc, W: rows_fn(Xc) @ W.T


def _margins(C0: Tensor, W: Tensor, H: Tensor) -> tuple[Tensor, Tensor]:
    """Signed margins ``sgn(C0 h_j) * (C0 w_j)`` and ``|C0 h_j|``, both ``(rows, m)``."""
    cw, ch = C0 @ W.T, C0 @ H.T
    return torch.where(ch >= 0, cw, -cw), ch.abs()


def closed_form_tau(X: Tensor, pre_fn: PreActs, W: Tensor, H: Tensor) -> Tensor:
    """Smallest ``tau_j >= 0`` with ``w_j + tau_j h_j`` in the cone of gate ``h_j`` (``W, H (m, k)``).

    Rows with ``|pre(h)| = 0`` and a negative margin cannot be fixed by ``h`` (measure zero) and are skipped.
    """
    tau = torch.zeros(W.shape[0], dtype=W.dtype, device=W.device)
    for mw, mh in _chunked_margins(X, pre_fn, W, H):
        ok = mh > 0
        need = torch.where(ok, torch.clamp(-mw, min=0) / torch.where(ok, mh, torch.ones_like(mh)), 0.0)
        if need.numel():
            tau = torch.maximum(tau, need.max(dim=0).values)
    return tau * (1.0 + 1e-9)


def split_min_norm(C0: Tensor, W: Tensor, H: Tensor) -> tuple[Tensor, Tensor] | None:
    """Minimum ``sum_j ||p_j|| + ||q_j||`` splits ``w_j = p_j - q_j`` with ``p_j, q_j`` in the cone of gate ``h_j``.

    ``W, H`` are ``(m, k)``; one SOCP for all units (separable), solved by Clarabel.
    Returns ``None`` if the solver fails.
    """
    import cvxpy as cp

    C = C0[C0.abs().sum(dim=1) > 0]
    C = C / C.abs().max(dim=1, keepdim=True).values
    S = torch.where(C @ H.T >= 0, 1.0, -1.0).to(C.dtype)  # (rows, m) gate signs
    Cn, Sn, Wn = (a.detach().cpu().double().numpy() for a in (C, S, W.T))
    Pv = cp.Variable(Wn.shape)
    Qv = Pv - Wn
    cons = [cp.multiply(Sn, Cn @ Pv) >= 0, cp.multiply(Sn, Cn @ Qv) >= 0]
    prob = cp.Problem(cp.Minimize(cp.sum(cp.norm(Pv, 2, axis=0)) + cp.sum(cp.norm(Qv, 2, axis=0))), cons)
    try:
        prob.solve(solver="CLARABEL")
    except cp.error.SolverError:
        return None
    if Pv.value is None or prob.status not in ("optimal", "optimal_inaccurate"):
        return None
    P = torch.as_tensor(np.asarray(Pv.value).T, dtype=W.dtype, device=W.device)
    Q = P - W
    # clean tiny solver violations by a minimal push along h (keeps p - q = w)
    mp, mh = _margins(C0, P, H)
    mq, _ = _margins(C0, Q, H)
    extra = torch.clamp(-torch.minimum(mp, mq), min=0)
    ok = mh > 0
    tau = torch.where(ok, extra / torch.where(ok, mh, torch.ones_like(mh)), 0.0).max(dim=0).values * (1 + 1e-9)
    return P + tau[:, None] * H, Q + tau[:, None] * H


def balance(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Rescale each pair ``(A_j, B_j) -> (r A_j, B_j / r)`` so ``||A_j|| = ||B_j||`` (output unchanged).

    Minimises ``1/2 (||A_j||^2 + ||B_j||^2)`` to ``||A_j|| ||B_j||`` (homogeneous units only).
    """
    na, nb = A.flatten(1).norm(dim=1), B.flatten(1).norm(dim=1)
    r = torch.where((na > 0) & (nb > 0), (nb / na.clamp_min(1e-300)).sqrt(), torch.ones_like(na))
    return A * r.reshape((-1,) + (1,) * (A.ndim - 1)), B / r.reshape((-1,) + (1,) * (B.ndim - 1))


def relu_split(
    X: Tensor,
    rows_fn: Rows,
    W: Tensor,
    H: Tensor,
    V: Tensor,
    *,
    method: str = "min-norm",
    max_socp_rows: int = 200_000,
    pre_fn: PreActs | None = None,
) -> tuple[Tensor, Tensor]:
    """Split every gated unit ``(W_j, V_j)`` with gate ``H_j`` into balanced ReLU units.

    Returns ``(W', V')`` with the ``p``-units first and the nonzero ``q``-units after.
    ``"min-norm"`` falls back to the closed form when ``rows * m > max_socp_rows``.
    """
    if method not in ("min-norm", "closed-form"):
        raise ValueError(f"method must be 'min-norm' or 'closed-form', got {method!r}")
    if W.shape[0] == 0:
        return W, V
    shape = W.shape[1:]
    Wf, Hf = W.reshape(W.shape[0], -1), H.reshape(H.shape[0], -1)
    pre_fn = pre_fn or rows_preacts(rows_fn)
    split = None
    if method == "min-norm":
        n_rows = rows_fn(X[:1]).shape[0] * X.shape[0]
        if n_rows * W.shape[0] <= max_socp_rows:
            split = split_min_norm(rows_fn(X), Wf, Hf)
    if split is None:
        tau = closed_form_tau(X, pre_fn, Wf, Hf)
        split = (Wf + tau[:, None] * Hf, tau[:, None] * Hf)
    Pt, Qt = split[0].reshape(-1, *shape), split[1].reshape(-1, *shape)
    Pt, Vp = balance(Pt, V)
    Qt, Vq = balance(Qt, -V)
    keep = Qt.flatten(1).norm(dim=1) > 0
    return torch.cat([Pt, Qt[keep]]), torch.cat([Vp, Vq[keep]])


def violation(X: Tensor, pre_fn: PreActs, W: Tensor, H: Tensor) -> float:
    """Relative cone violation ``sum_r max(-m_r, 0) / sum_r |m_r|`` of the margins of all units."""
    Wf, Hf = W.reshape(W.shape[0], -1), H.reshape(H.shape[0], -1)
    bad, tot = 0.0, 0.0
    for mw, _ in _chunked_margins(X, pre_fn, Wf, Hf):
        bad += float(torch.clamp(-mw, min=0).sum())
        tot += float(mw.abs().sum())
    return bad / max(tot, 1e-300)
