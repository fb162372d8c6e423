"""Softmax attention: the dual (support-vector) form of the SVR view.

``out_i = sum_j softmax_j(q_i^T k_j * scale) v_j``, i.e. ``Phi(x)^T Phi(y) = exp(x^T y / sqrt(D))``
and ``h(q) = sum_j exp(q^T k_j / sqrt(D))``.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from ._common import apply_mask, check_common, combine_masks, default_scale, dropout_weights, safe_softmax, zero_padded
from .registry import register


def softmax_reference(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scale: float, dropout_p: float):
    """Literal path: ``W = softmax(q k^T * scale + mask)``, ``out = W v``; returns ``(out, W)``."""
    scores = apply_mask((q @ k.transpose(-2, -1)) * scale, mask)
    w = safe_softmax(scores)
    return dropout_weights(w, dropout_p) @ v, w


def softmax_attention(
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
):
    """Scaled dot-product attention ``softmax(q k^T / sqrt(D)) v`` on ``(B, H, N, D)`` tensors.

    The fast path is a single ``F.scaled_dot_product_attention`` call. Rows with no
    visible key give a zero output. Returns ``out`` or ``(out, weights (B, H, Nq, Nk))``.
    """
    path = check_common(q, k, v, attn_mask, key_padding_mask, dropout_p, impl, need_weights, name="softmax_attention")
    Nq, Nk = q.shape[2], k.shape[2]
    if key_padding_mask is not None:
        k, v = zero_padded(k, key_padding_mask), zero_padded(v, key_padding_mask)
    if path == "fast":
        if attn_mask is None and key_padding_mask is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
        mask = combine_masks(attn_mask, key_padding_mask, is_causal, Nq, Nk, q.device, q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    mask = combine_masks(attn_mask, key_padding_mask, is_causal, Nq, Nk, q.device, q.dtype)
    out, w = softmax_reference(q, k, v, mask, default_scale(scale, q.shape[-1]), dropout_p)
    return (out, w) if need_weights else out


register(
    "softmax",
    softmax_attention,
    summary="softmax attention (the dual form); fast path = one SDPA call",
    order=0,
)
