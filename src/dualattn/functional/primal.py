"""Primal-Attention (Chen et al., NeurIPS 2023): self-attention via asymmetric kernel SVD in the primal.

The attention kernel ``kappa(q_i, k_j) = phi(q_i)^T phi(k_j)`` is asymmetric; its KSVD has the
primal representation with left/right projection scores

``e(x_i) = W_e^T phi(q_i)``, ``r(x_i) = W_r^T phi(k_i)``  (each of rank ``s``),

and the layer outputs ``[e(x_i), r(x_i)] W_c`` (``W_c`` lives in the module). As in the
authors' code, ``phi`` normalises to the unit sphere (cosine kernel) and ``W_e, W_r`` are
data-dependent, ``W_e = X_sub^T W~_e``, built from the input sampled at fixed positions.
The KSVD objective is added to the training loss via :func:`ksvd_loss`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import check_common

FEATURE_MAPS = ("cos",)


def _check_w(w: Tensor, arg: str, B: int, H: int, D: int, ref: Tensor, name: str) -> Tensor:
    if not isinstance(w, Tensor):
        raise TypeError(f"{name}: `{arg}` must be a tensor of shape (B, H, D, s) or (H, D, s), got {type(w).__name__}")
    if w.dim() == 3:
        w = w[None]
    if w.dim() != 4 or w.shape[1] != H or w.shape[2] != D or w.shape[0] not in (1, B):
        raise ValueError(f"{name}: `{arg}` must have shape (B, H, D, s) = ({B}, {H}, {D}, s) or (H, D, s), got {tuple(w.shape)}")
    if w.dtype != ref.dtype:
        raise TypeError(f"{name}: `{arg}` must have dtype {ref.dtype}, got {w.dtype}")
    return w


def primal_attention(
    q: Tensor,
    k: Tensor,
    v: Optional[Tensor] = None,
    *,
    w_e: Tensor,
    w_r: Tensor,
    attn_mask: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    need_weights: bool = False,
    impl: str = "auto",
    feature_map: str = "cos",
):
    """Primal-Attention scores ``[phi(q) W_e, phi(k) W_r]`` of shape ``(B, H, N, 2s)``.

    ``v`` is unused (the primal form has no value expansion). Self-attention only (Nq = Nk);
    non-causal. ``need_weights=True`` also returns the asymmetric kernel
    ``phi(q_i)^T phi(k_j)`` (B, H, N, N) that the layer's KSVD factorises (cosine
    similarities, not a probability distribution); padded keys get 0.
    """
    name = "primal_attention"
    check_common(q, k, v, attn_mask, key_padding_mask, dropout_p, impl, need_weights, name=name)
    B, H, Nq, D = q.shape
    if k.shape[2] != Nq:
        raise ValueError(f"{name}: primal attention pairs e(x_i) with r(x_i), so it needs Nq == Nk, got {Nq} and {k.shape[2]}")
    if is_causal:
        raise ValueError(f"{name}: is_causal is unsupported: W_e(X), W_r(X) are built from the whole sequence")
    if attn_mask is not None:
        raise ValueError(f"{name}: attn_mask is unsupported: the primal form has no score matrix to mask")
    if dropout_p:
        raise ValueError(f"{name}: dropout_p must be 0: the primal form has no attention weights to drop")
    if scale is not None:
        raise ValueError(f"{name}: `scale` has no effect on the cosine feature map; pass None")
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"{name}: `feature_map` must be one of {FEATURE_MAPS}, got {feature_map!r}")
    w_e = _check_w(w_e, "w_e", B, H, D, q, name)
    w_r = _check_w(w_r, "w_r", B, H, D, q, name)
    if w_e.shape[-1] != w_r.shape[-1]:
        raise ValueError(f"{name}: `w_e` and `w_r` must share the rank s, got {w_e.shape[-1]} and {w_r.shape[-1]}")
    fq, fk = F.normalize(q, p=2.0, dim=-1), F.normalize(k, p=2.0, dim=-1)
    if key_padding_mask is not None:
        fk = fk.masked_fill(~key_padding_mask[:, None, :, None], 0.0)
    e, r = fq @ w_e, fk @ w_r
    out = torch.cat([e, r], dim=-1)
    if need_weights:
        return out, fq @ fk.transpose(-2, -1)
    return out


def ksvd_loss(e: Tensor, r: Tensor, lam: Tensor, w_e: Tensor, w_r: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """KSVD regulariser of Primal-Attention (as in the authors' code), averaged over the batch:

    ``J = ( 1/2 mean_{h,i} ||e_i Lambda_h||^2 + 1/2 mean_{h,i} ||r_i Lambda_h||^2 - tr(mean_h W~_e,h^T W~_r,h) )^2``

    ``e, r``: ``(B, H, N, s)`` projection scores; ``lam``: ``(H, s)`` singular values;
    ``w_e, w_r``: ``(H, Ns, s)`` the learned (data-independent) projection parameters;
    ``mask``: optional ``(B, N)`` bool, True = position counts in the means.
    """
    if e.shape != r.shape or e.dim() != 4:
        raise ValueError(f"ksvd_loss: `e` and `r` must both be (B, H, N, s), got {tuple(e.shape)} and {tuple(r.shape)}")
    H, s = e.shape[1], e.shape[3]
    if tuple(lam.shape) != (H, s):
        raise ValueError(f"ksvd_loss: `lam` must have shape (H, s) = ({H}, {s}), got {tuple(lam.shape)}")
    if w_e.dim() != 3 or w_e.shape != w_r.shape or w_e.shape[0] != H or w_e.shape[2] != s:
        raise ValueError(f"ksvd_loss: `w_e`, `w_r` must both be (H, Ns, s) with H={H}, s={s}, got {tuple(w_e.shape)}, {tuple(w_r.shape)}")
    le = ((e * lam[None, :, None, :]) ** 2).sum(-1)  # (B, H, N)
    lr = ((r * lam[None, :, None, :]) ** 2).sum(-1)
    if mask is None:
        me, mr = le.mean(dim=(1, 2)), lr.mean(dim=(1, 2))
    else:
        if mask.dtype != torch.bool or tuple(mask.shape) != (e.shape[0], e.shape[2]):
            raise ValueError(f"ksvd_loss: `mask` must be bool (B, N) = ({e.shape[0]}, {e.shape[2]}), got {mask.dtype} {tuple(mask.shape)}")
        m = mask[:, None, :].to(e.dtype)
        cnt = (m.sum(dim=(1, 2)) * H).clamp_min(1.0)
        me, mr = (le * m).sum(dim=(1, 2)) / cnt, (lr * m).sum(dim=(1, 2)) / cnt
    trace = torch.einsum("hps,hpt->hst", w_e, w_r.to(w_e.dtype)).mean(0).diagonal().sum()
    return ((me / 2 + mr / 2 - trace) ** 2).mean()


# --------------------------------------------------------------------------- registry entry
# Kept at the end of the file (and self-contained) so that rewrites of the math above leave it intact.
# Options here are the *layer's* options (nn.Attention builds W_e(X), W_r(X) from them); the
# function itself takes the projections ``w_e``/``w_r``.
from .registry import Option, optional_positive_int, positive_int, register, unsupported  # noqa: E402


def _primal_checks(ctx) -> list:
    q, k = ctx["q_shape"], ctx["k_shape"]
    if q is not None and k is not None and q[2] != k[2]:
        return [f"Nq != Nk ({q[2]} vs {k[2]}): primal attention pairs e(x_i) with r(x_i), so it needs Nq == Nk"]
    return []


register(
    "primal",
    primal_attention,
    options={
        "low_rank": Option(20, positive_int, "rank s of the KSVD projections"),
        "num_samples": Option(None, optional_positive_int, "sampled positions for W_e(X), W_r(X) (default 10*s)"),
    },
    features={
        "causal": unsupported("its projections W_e(X), W_r(X) are built from the whole sequence"),
        "attn_mask": unsupported("the primal form has no score matrix to mask"),
        "cross": unsupported("it pairs e(x_i) with r(x_i), so queries and keys must be the same tokens"),
        "attn_drop": unsupported("the primal form has no attention weights to drop; use attn_drop=0.0"),
    },
    needs_values=False,
    flags=("primal",),
    module_options=("low_rank", "num_samples"),
    check=_primal_checks,
    summary="Primal-Attention (KSVD in the primal); self-attention layer with its own projections",
    order=7,
)
