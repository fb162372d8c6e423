"""Cone decompositions: realise a gated neuron with two ReLU neurons.

A gated unit with gate ``h`` and first-layer weights ``w`` computes
``D ∘ (C_raw w)`` where ``D = 1{C_raw h >= 0}``.  With the sign-adjusted
constraint matrix ``C = diag(2D - 1) C_raw`` the cone of weights that induce
the same activation pattern is ``K = {w : C w >= 0}`` (``h`` lies in it), and for
``p, q in K``: ``D ∘ (C_raw (p - q)) = relu(C_raw p) - relu(C_raw q)``.
So ``w = p - q`` realises the gated unit with two ReLU units ``(p, v), (q, -v)``.

* :func:`split_closed_form`: ``p = w + tau h``, ``q = tau h`` with the smallest
  feasible ``tau = max_r max(-(C w)_r, 0) / (C h)_r``.
* :func:`split_min_norm`: ``min ||p|| + ||q|| s.t. p - q = w, C p >= 0, C q >= 0``
  (one SOCP for all units, solved with Clarabel; the ReLU pair's weight decay after balancing is
  ``||v|| (||p|| + ||q||)``), falling back to the closed form if it fails.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def split_closed_form(C: Tensor, w: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``(p, q) = (w + tau h, tau h)`` with the smallest ``tau >= 0`` such that ``C p >= 0``."""
    cw, ch = C @ w, C @ h
    ok = ch > 0
    need = torch.where(ok, torch.clamp(-cw, min=0) / torch.where(ok, ch, torch.ones_like(ch)), torch.zeros_like(ch))
    tau = (need.max() if need.numel() else torch.zeros((), dtype=w.dtype)) * (1.0 + 1e-9)
    return w + tau * h, tau * h


def split_min_norm(C0: Tensor, W: Tensor, H: Tensor, *, max_rows: int = 200_000) -> tuple[Tensor, Tensor]:
    """Minimum ``sum_j ||p_j|| + ||q_j||`` splits ``w_j = p_j - q_j`` with ``p_j, q_j`` in the cone of gate ``h_j``.

    ``W, H`` are ``(m, k)``; one SOCP for all units (separable), solved by Clarabel;
    falls back to :func:`split_closed_form` per unit when too large or on failure.
    """

    def fallback():
        pairs = [split_closed_form(_signed(C0, H[j]), W[j], H[j]) for j in range(W.shape[0])]
        return torch.stack([p for p, _ in pairs]), torch.stack([q for _, q in pairs])

    if C0.shape[0] * W.shape[0] > max_rows:
        return fallback()
    import cvxpy as cp

    keep = C0.abs().sum(dim=1) > 0
    C = C0[keep]
    C = C / C.abs().max(dim=1, keepdim=True).values
    S = torch.where(C @ H.T >= 0, 1.0, -1.0).to(C.dtype)  # (rows, m) gate signs
    Cn, Sn, Wn = (t.detach().cpu().double().numpy() for t in (C, S, W.T))
    Pv = cp.Variable(Wn.shape)
    Qv = Pv - Wn
    cons = [cp.multiply(Sn, Cn @ Pv) >= 0, cp.multiply(Sn, Cn @ Qv) >= 0]
    prob = cp.Problem(cp.Minimize(cp.sum(cp.norm(Pv, 2, axis=0)) + cp.sum(cp.norm(Qv, 2, axis=0))), cons)
    try:
        prob.solve(solver="CLARABEL")
    except cp.error.SolverError:
        return fallback()
    if Pv.value is None or prob.status not in ("optimal", "optimal_inaccurate"):
        return fallback()
    P = torch.as_tensor(Pv.value.T, dtype=W.dtype, device=W.device)
    Q = P - W
    # clean tiny solver violations by a minimal push along h (keeps p - q = w)
    for j in range(W.shape[0]):
        Cj = _signed(C0, H[j])
        extra = torch.clamp(-torch.minimum(Cj @ P[j], Cj @ Q[j]), min=0)
        if (extra > 0).any():
            ch = Cj @ H[j]
            ok = ch > 0
            tau = torch.where(ok, extra / torch.where(ok, ch, torch.ones_like(ch)), torch.zeros_like(ch)).max()
            P[j], Q[j] = P[j] + tau * (1 + 1e-9) * H[j], Q[j] + tau * (1 + 1e-9) * H[j]
    return P, Q


def _signed(C0: Tensor, h: Tensor) -> Tensor:
    """``diag(2 D - 1) C0`` with ``D = 1{C0 h >= 0}``: the cone of gate ``h`` is ``{x : C x >= 0}``."""
    return torch.where((C0 @ h >= 0)[:, None], C0, -C0)


def balance(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Rescale each pair ``(A_j, B_j) -> (r A_j, B_j / r)`` so ``||A_j|| = ||B_j||`` (output unchanged).

    Minimises ``1/2 (||A_j||^2 + ||B_j||^2)`` to ``||A_j|| ||B_j||`` (homogeneous units only).
    """
    na, nb = A.flatten(1).norm(dim=1), B.flatten(1).norm(dim=1)
    r = torch.where((na > 0) & (nb > 0), (nb / na.clamp_min(1e-300)).sqrt(), torch.ones_like(na))
    shape = (-1,) + (1,) * (A.ndim - 1)
    shape_b = (-1,) + (1,) * (B.ndim - 1)
    return A * r.reshape(shape), B / r.reshape(shape_b)


def relu_split(C0: Tensor, W: Tensor, H: Tensor, V: Tensor, *, method: str = "min-norm"):
    """Split every gated unit ``(W_j, V_j)`` with gate ``H_j`` into balanced ReLU units.

    ``C0`` is the raw constraint matrix (rows = pre-activations on the training
    data as linear functions of the flattened first-layer weights).  Returns ``(W', V')`` with the
    ``p``-units first and the nonzero ``q``-units after them.
    """
    if method not in ("min-norm", "closed-form"):
        raise ValueError(f"method must be 'min-norm' or 'closed-form', got {method!r}")
    shape = W.shape[1:]
    if W.shape[0] == 0:
        return W, V
    Wf, Hf = W.reshape(W.shape[0], -1), H.reshape(H.shape[0], -1)
    if method == "min-norm":
        Pt, Qt = split_min_norm(C0, Wf, Hf)
    else:
        pairs = [split_closed_form(_signed(C0, Hf[j]), Wf[j], Hf[j]) for j in range(W.shape[0])]
        Pt, Qt = torch.stack([p for p, _ in pairs]), torch.stack([q for _, q in pairs])
    Pt, Qt = Pt.reshape(-1, *shape), Qt.reshape(-1, *shape)
    Pt, Vp = balance(Pt, V)
    Qt, Vq = balance(Qt, -V)
    keep = Qt.flatten(1).norm(dim=1) > 0
    return torch.cat([Pt, Qt[keep]]), torch.cat([Vp, Vq[keep]])


def violation(C0: Tensor, W: Tensor, H: Tensor) -> float:
    """Relative cone violation ``sum_r max(-(C w)_r, 0) / sum_r |(C w)_r|`` over all units."""
    bad, tot = 0.0, 0.0
    for j in range(W.shape[0]):
        h, w = H[j].reshape(-1), W[j].reshape(-1)
        m = torch.where(C0 @ h >= 0, 1.0, -1.0).to(w.dtype) * (C0 @ w)
        bad += float(torch.clamp(-m, min=0).sum())
        tot += float(m.abs().sum())
    return bad / max(tot, 1e-300)
