"""Attention-BN: batch normalisation of the SVR's inputs with statistics of its training keys.

For one head, with keys ``k_j`` (the SVR's training inputs):
``mu = mean_j k_j``, ``s_d = sqrt(mean_j (k_j(d) - mu(d))^2 + eps)`` (population variance),
``q^_i = (q_i - beta*mu)/s``, ``k^_j = (k_j - beta*mu)/s``,
``out_i = sum_j softmax_j(q^_i^T k^_j * scale) v_j``.

Padded keys are excluded from the statistics. With ``is_causal=True`` query ``i``
uses the statistics of keys ``1..i`` only (running statistics).

Fast path: ``q^_i^T k^_j = (q_i - beta*mu)^T diag(1/s^2) k_j - c_i`` where ``c_i`` does not
depend on ``j``; softmax is invariant to a per-row constant, so BN attention is SDPA on
``q' = (q - beta*mu)/s^2`` and the raw keys.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    apply_mask,
    check_beta_eps,
    check_common,
    combine_masks,
    default_scale,
    dropout_weights,
    safe_softmax,
    zero_padded,
)
from .registry import Option, finite_float, positive_finite_float, register


def var_mean_seq(k: Tensor) -> Tuple[Tensor, Tensor]:
    """Population variance and mean over the sequence dim: ``mu = mean_j k_j``,
    ``var = mean_j (k_j - mu)^2`` (two passes, as stable as Welford's update).

    Same result as ``torch.var_mean(k, dim=-2, correction=0, keepdim=True)``, which reduces
    over the non-innermost dim of ``(B, H, N, D)`` about 10x slower on CPU.
    """
    mu = k.mean(dim=-2, keepdim=True)
    c = k - mu
    return (c * c).mean(dim=-2, keepdim=True), mu


def key_statistics(
    k: Tensor,
    valid: Optional[Tensor] = None,
    *,
    upto: Optional[Tensor] = None,
    eps: float = 1e-5,
) -> Tuple[Tensor, Tensor]:
    """Masked per-(batch, head, feature) mean and variance of keys ``k (B, H, Nk, D)``.

    ``valid``: bool broadcastable to ``(B, H, Nk)``, True for keys that count.
    ``upto``: optional long ``(Nq,)``; if given, row ``i`` of the result holds the running
    statistics of keys ``0..upto[i]`` (``-1`` = none), giving ``(B, H, Nq, D)``;
    otherwise the statistics of all valid keys, ``(B, H, 1, D)``.
    Returns ``(mu, s2)`` with ``s2 = var + eps``; a set with no valid key gives ``mu=0, s2=eps``.

    Running statistics use shifted data (shift = the first valid key, which never lies in the
    future of a query that has any visible key) accumulated in float64, so they are stable
    like Welford's update and no statistic depends on keys after ``upto[i]``.
    """
    B, H, Nk, D = k.shape
    if valid is None:
        w = torch.ones(1, 1, Nk, 1, dtype=k.dtype, device=k.device)
        kz = k
    else:
        vb = valid.expand(B, H, Nk)[..., None]
        w = vb.to(k.dtype)
        kz = k.masked_fill(~vb, 0.0)
    if upto is None and valid is None:
        var, mu = var_mean_seq(k)
        return mu, var + eps
    if upto is None:
        n = w.sum(dim=-2, keepdim=True)
        n_safe = n.clamp_min(1.0)
        mu = (kz * w).sum(dim=-2, keepdim=True) / n_safe
        var = (((kz - mu) * w) ** 2).sum(dim=-2, keepdim=True) / n_safe
        return mu, var + eps
    acc = torch.float64 if k.dtype in (torch.float16, torch.bfloat16, torch.float32) else k.dtype
    if valid is None:
        shift = kz[:, :, :1, :]
    else:
        first = vb.to(torch.int8).argmax(dim=-2, keepdim=True)  # first valid index (0 if none)
        shift = torch.gather(kz, 2, first.expand(B, H, 1, D))
    d = ((kz - shift) * w).to(acc)
    s1 = d.cumsum(dim=-2)
    s2 = (d * d).cumsum(dim=-2)
    n = w.to(acc).expand(B, H, Nk, 1).cumsum(dim=-2)
    idx = upto.clamp(min=0)
    s1, s2, n = s1[:, :, idx], s2[:, :, idx], n[:, :, idx]
    none = (upto < 0)[:, None]
    n = torch.where(none, torch.zeros_like(n), n)
    n_safe = n.clamp_min(1.0)
    m1 = s1 / n_safe
    var = (s2 / n_safe - m1 * m1).clamp_min(0.0)
    mu = (shift.to(acc) + m1) * (n > 0)
    return mu.to(k.dtype), var.to(k.dtype) + eps


def causal_upto(Nq: int, Nk: int, device) -> Tensor:
    """Index of the last key query ``i`` may see under ``is_causal`` (top-left aligned)."""
    return torch.arange(Nq, device=device).clamp(max=Nk - 1)


def bn_query_transform(q: Tensor, mu: Tensor, s2: Tensor, beta: float) -> Tensor:
    """Fast-path query ``q' = (q - beta*mu)/s^2``, as one fused ``addcmul`` (``q * (1/s^2) - beta*mu/s^2``)."""
    inv = s2.reciprocal()
    return torch.addcmul(-beta * mu * inv, q, inv)


class _BNQueryGlobal(torch.autograd.Function):
    """Fused ``q' = (q - beta*mu)/s^2`` with ``mu, s^2`` the (unmasked, non-causal) key statistics.

    Same function as ``bn_query_transform(q, *key_statistics(k))`` with a hand-written backward
    (3 full-size passes instead of autograd's ~7), which matters at short sequence lengths.
    """

    @staticmethod
    def forward(ctx, q, k, beta: float, eps: float):
        var, mu = var_mean_seq(k)
        inv = (var + eps).reciprocal()
        ctx.save_for_backward(q, k, mu, inv)
        ctx.beta = beta
        return torch.addcmul(-beta * mu * inv, q, inv)

    @staticmethod
    def backward(ctx, g):
        q, k, mu, inv = ctx.saved_tensors
        beta, n = ctx.beta, k.shape[-2]
        s1 = g.sum(dim=-2, keepdim=True)  # sum_i g_i
        s2 = (g * q).sum(dim=-2, keepdim=True)  # sum_i g_i q_i
        gq = g * inv
        g_inv = s2 - beta * mu * s1
        g_mu = -beta * inv * s1
        g_var = -g_inv * inv * inv
        # d var / d k_j = 2 (k_j - mu) / n ; d mu / d k_j = 1 / n
        a = 2.0 * g_var / n
        gk = torch.addcmul(g_mu / n - a * mu, k, a)
        return gq, gk, None, None


def bn_logits_reference(q: Tensor, k: Tensor, mu: Tensor, s2: Tensor, beta: float, scale: float) -> Tensor:
    """Literal BN scores ``(q^_i)^T k^_ij * scale`` with ``k^_ij = (k_j - beta*mu_i)/s_i`` (row-wise stats)."""
    a = (q - beta * mu) / s2  # = q^_i / s_i
    return (a @ k.transpose(-2, -1) - (a * (beta * mu)).sum(-1, keepdim=True)) * scale


def bn_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    attn_mask: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    need_weights: bool = False,
    impl: str = "auto",
    beta: float = 1.0,
    eps: float = 1e-5,
):
    """Attention-BN (softmax): SDPA on ``(q - beta*mu)/s^2`` and ``k`` (fast) or the literal formula."""
    name = "bn_attention"
    path = check_common(q, k, v, attn_mask, key_padding_mask, dropout_p, impl, need_weights, name=name)
    check_beta_eps(beta, eps, name=name)
    Nq, Nk = q.shape[2], k.shape[2]
    valid = None if key_padding_mask is None else key_padding_mask[:, None, :]
    upto = causal_upto(Nq, Nk, q.device) if is_causal else None
    k, v = zero_padded(k, key_padding_mask), zero_padded(v, key_padding_mask)
    if path == "fast" and valid is None and upto is None:
        qt = _BNQueryGlobal.apply(q, k, float(beta), float(eps))
        if attn_mask is None:
            return F.scaled_dot_product_attention(qt, k, v, dropout_p=dropout_p, scale=scale)
        return F.scaled_dot_product_attention(qt, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    mu, s2 = key_statistics(k, valid, upto=upto, eps=eps)
    mask = combine_masks(attn_mask, key_padding_mask, is_causal, Nq, Nk, q.device, q.dtype)
    if path == "fast":
        qt = bn_query_transform(q, mu, s2, beta)
        if attn_mask is None and key_padding_mask is None:
            return F.scaled_dot_product_attention(qt, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        return F.scaled_dot_product_attention(qt, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    scores = apply_mask(bn_logits_reference(q, k, mu, s2, beta, default_scale(scale, q.shape[-1])), mask)
    w = safe_softmax(scores)
    out = dropout_weights(w, dropout_p) @ v
    return (out, w) if need_weights else out


#: Options shared by every BN variant (bn, bn+sh, linear-bn).
BN_OPTIONS = {
    "beta": Option(1.0, finite_float, "weight on the key mean: q^ = (q - beta*mu)/s (0 = scaling only)"),
    "eps": Option(1e-5, positive_finite_float, "added to the key variance before the square root"),
}

register(
    "bn",
    bn_attention,
    options=BN_OPTIONS,
    summary="Attention-BN: softmax attention on keys/queries normalised by the key statistics",
    order=3,
)
