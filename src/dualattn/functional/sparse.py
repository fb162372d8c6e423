"""Sparse attention: query ``i`` fits its SVR on a subset ``M_i`` of the keys.

``out_i = sum_{j in M_i} softmax_j(q_i^T k_j * scale) v_j`` with patterns

* ``"local"``         ``M_i = {j : |i - j| <= window}``;
* ``"strided"``       ``M_i = {j : (i - j) mod stride = 0}`` (dilated);
* ``"local+strided"`` the union of both (Child et al.'s factorised pattern);
* ``"topk"``          the ``topk`` keys with the largest scores (after the other masks).

Fast paths: ``"local"`` (without ``attn_mask``) is blocked: queries are cut into blocks of
``C = max(16, 2*window)`` rows and each block attends, in one batched SDPA call, to its key band
of ``C + 2*window`` keys (an ``unfold`` view), so time and memory are O(N * window).
``"strided"``/``"local+strided"`` (or ``"local"`` with an ``attn_mask``) pass one (N x N) boolean
mask to SDPA, which needs O(N^2) mask memory. Top-k runs in query chunks of ``chunk_size`` rows,
so its score buffer is O(chunk_size * Nk).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import apply_mask, check_common, combine_masks, default_scale, dropout_weights, safe_softmax, zero_padded
from .registry import Option, non_negative_int, one_of, positive_int, register

PATTERNS = ("local", "strided", "local+strided", "topk")


def sparse_pattern(Nq: int, Nk: int, pattern: str, *, window: int = 16, stride: int = 8, device=None) -> Tensor:
    """Boolean ``(Nq, Nk)`` membership ``j in M_i`` for a structural pattern."""
    i = torch.arange(Nq, device=device)[:, None]
    j = torch.arange(Nk, device=device)[None, :]
    if pattern == "local":
        return (i - j).abs() <= window
    if pattern == "strided":
        return (i - j).remainder(stride) == 0
    if pattern == "local+strided":
        return ((i - j).abs() <= window) | ((i - j).remainder(stride) == 0)
    raise ValueError(f"sparse_pattern: `pattern` must be one of {PATTERNS[:3]}, got {pattern!r}")


def _local_blocked(q, k, v, window: int, key_padding_mask, is_causal: bool, dropout_p: float, scale):
    """Banded local attention ``|i - j| <= window`` (and ``j <= i`` if causal) in O(N * window)."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    C = max(16, 2 * window)
    nC = -(-Nq // C)
    L = C + 2 * window
    right = nC * C + window - Nk  # padded key p <-> original key j = p - window
    if right < 0:  # keys after the last band are never visible
        k, v = k[:, :, : Nk + right], v[:, :, : Nk + right]
        kpm = None if key_padding_mask is None else key_padding_mask[:, : Nk + right]
        right = 0
    else:
        kpm = key_padding_mask
    kp = F.pad(k, (0, 0, window, right)).unfold(2, L, C).transpose(-1, -2)  # (B, H, nC, L, D) view
    vp = F.pad(v, (0, 0, window, right)).unfold(2, L, C).transpose(-1, -2)
    n_real = k.shape[2]
    valid = torch.ones(1, n_real, dtype=torch.bool, device=q.device) if kpm is None else kpm
    valid = F.pad(valid, (window, right), value=False).unfold(1, L, C)  # (B or 1, nC, L)
    a = torch.arange(C, device=q.device)[:, None]
    t = torch.arange(L, device=q.device)[None, :]
    band = (t - a >= 0) & (t - a <= (window if is_causal else 2 * window))  # (C, L), same for every block
    mask = band & valid[:, None, :, None, :]  # (B or 1, 1, nC, C, L)
    qb = F.pad(q, (0, 0, 0, nC * C - Nq)).view(B, H, nC, C, D)
    out = F.scaled_dot_product_attention(qb, kp, vp, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out.reshape(B, H, nC * C, v.shape[-1])[:, :, :Nq]


def _topk_keep(scores: Tensor, topk: int) -> Tensor:
    """Bool mask of the ``topk`` largest entries per row, masked (``-inf``) entries excluded.

    NaN scores (a corrupt real key or query) rank first in ``topk`` and are kept, so they reach
    the output instead of being silently dropped.
    """
    kk = min(topk, scores.shape[-1])
    s = scores.detach()
    idx = s.topk(kk, dim=-1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, idx, True) & ~torch.isneginf(s)


def sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    pattern: str = "local",
    window: int = 16,
    stride: int = 8,
    topk: int = 32,
    attn_mask: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    need_weights: bool = False,
    impl: str = "auto",
    chunk_size: int = 256,
):
    """Softmax attention restricted to the key subsets ``M_i`` of ``pattern``."""
    name = "sparse_attention"
    path = check_common(q, k, v, attn_mask, key_padding_mask, dropout_p, impl, need_weights, name=name)
    for arg, val in (("pattern", pattern), ("window", window), ("stride", stride), ("topk", topk),
                     ("chunk_size", chunk_size)):
        SPARSE_OPTIONS[arg].validate(val, option=arg, name=name)
    Nq, Nk = q.shape[2], k.shape[2]
    k, v = zero_padded(k, key_padding_mask), zero_padded(v, key_padding_mask)
    mask = combine_masks(attn_mask, key_padding_mask, is_causal, Nq, Nk, q.device, q.dtype)
    sc = default_scale(scale, q.shape[-1])
    if pattern == "local" and path == "fast" and attn_mask is None:
        return _local_blocked(q, k, v, window, key_padding_mask, is_causal, dropout_p, scale)
    if pattern != "topk":
        pat = sparse_pattern(Nq, Nk, pattern, window=window, stride=stride, device=q.device)
        if mask is None:
            mask = pat
        elif mask.dtype == torch.bool:
            mask = mask & pat
        else:
            mask = mask.masked_fill(~pat, float("-inf"))
        if path == "fast":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
        w = safe_softmax(apply_mask((q @ k.transpose(-2, -1)) * sc, mask))
        out = dropout_weights(w, dropout_p) @ v
        return (out, w) if need_weights else out
    step = chunk_size if path == "fast" else Nq
    outs, ws = [], []
    for s in range(0, Nq, step):
        qc = q[:, :, s : s + step]
        mc = None if mask is None else mask[..., s : s + step, :] if mask.shape[-2] == Nq else mask
        scores = apply_mask((qc @ k.transpose(-2, -1)) * sc, mc)
        scores = scores.masked_fill(~_topk_keep(scores, topk), float("-inf"))
        w = safe_softmax(scores)
        outs.append(dropout_weights(w, dropout_p) @ v)
        if need_weights:
            ws.append(w)
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return (out, torch.cat(ws, dim=2)) if need_weights else out


SPARSE_OPTIONS = {
    "pattern": Option("local", one_of(*PATTERNS), "which keys M_i query i sees: " + ", ".join(PATTERNS)),
    "window": Option(16, non_negative_int, "local pattern: |i - j| <= window"),
    "stride": Option(8, positive_int, "strided pattern: (i - j) mod stride == 0"),
    "topk": Option(32, positive_int, "topk pattern: keys with the topk largest scores"),
    "chunk_size": Option(256, positive_int, "topk fast path: query rows per chunk"),
}

register(
    "sparse",
    sparse_attention,
    options=SPARSE_OPTIONS,
    summary="softmax attention restricted to a key subset per query (local / strided / top-k)",
    order=2,
)
