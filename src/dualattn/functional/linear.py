"""Linear attention and linear Attention-BN.

SVR view with ``Phi(x) = elu(x) + 1`` and ``h(q) = sum_j Phi(q)^T Phi(k_j)``:
``out_i = Phi(q_i)^T (sum_j Phi(k_j) v_j^T) / (Phi(q_i)^T sum_j Phi(k_j))`` in O(N) time and memory.
Causal: the sums run over ``j <= i`` (chunked cumulative sums). Padded keys are removed
from both the ``kv`` sum and the normaliser (their feature vector is set to 0).

Linear BN: ``q^ = (q - beta*mu)/s``, ``k^ = (k - beta*mu)/s`` with masked key statistics, then
linear attention on ``(q^, k^)``. Centering does not cancel here, so it is applied explicitly.
Causal linear BN normalises query ``i`` with the running statistics of keys ``<= i`` and key
``j`` with those of keys ``<= j`` (keeps the O(N) factorisation; nothing leaks from the future).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import check_beta_eps, check_common, combine_masks, dropout_weights
from .bn import BN_OPTIONS, causal_upto, key_statistics
from .registry import Option, positive_int, reference_only, register

#: Why the O(N) fast path cannot take an arbitrary mask / attention dropout (registry + errors).
WHY_NO_MASK = ("an arbitrary mask breaks the O(N) factorisation of linear attention; use key_padding_mask / "
               "is_causal, or the O(N^2) reference path (impl='reference', or fused=False on dualattn.nn.Attention)")
WHY_NO_DROPOUT = ("the O(N) fast path never forms the attention weights, so it cannot drop them; use attn_drop=0.0, "
                  "or the O(N^2) reference path (impl='reference', or fused=False on dualattn.nn.Attention)")


def elu_feature_map(x: Tensor) -> Tensor:
    """``Phi(x) = elu(x) + 1`` (positive, so the normaliser ``h`` is positive)."""
    return F.elu(x) + 1.0


def _div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den == 0`` (a query with no visible key); NaN/inf propagate
    (a corrupt real key must not be hidden as a zero output)."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _linear_noncausal(fq: Tensor, fk: Tensor, v: Tensor) -> Tensor:
    kv = fk.transpose(-2, -1) @ v  # (B, H, D, Dv)
    z = fk.sum(dim=-2)  # (B, H, D)
    return _div(fq @ kv, (fq * z[:, :, None, :]).sum(-1, keepdim=True))


def _linear_causal(fq: Tensor, fk: Tensor, v: Tensor, chunk: int) -> Tensor:
    """Chunked causal form: exclusive prefix sums of per-chunk states + masked intra-chunk part."""
    B, H, N, D = fq.shape
    Dv = v.shape[-1]
    n = -(-N // chunk)
    pad = n * chunk - N
    if pad:
        fq, fk, v = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v))
    fq, fk, v = fq.view(B, H, n, chunk, D), fk.view(B, H, n, chunk, D), v.view(B, H, n, chunk, Dv)
    state = fk.transpose(-2, -1) @ v  # (B, H, n, D, Dv)
    s_prev = state.cumsum(dim=2) - state
    zc = fk.sum(dim=-2)  # (B, H, n, D)
    z_prev = zc.cumsum(dim=2) - zc
    a = (fq @ fk.transpose(-2, -1)).tril()  # (B, H, n, C, C)
    num = fq @ s_prev + a @ v
    den = (fq * z_prev[:, :, :, None, :]).sum(-1, keepdim=True) + a.sum(-1, keepdim=True)
    return _div(num, den).reshape(B, H, n * chunk, Dv)[:, :, :N]


def _linear_core(q, k, v, *, attn_mask, key_padding_mask, is_causal, dropout_p, path, need_weights, chunk, name):
    Nq, Nk = q.shape[2], k.shape[2]
    if key_padding_mask is not None:
        # select (not multiply) before the feature map: NaN/inf in padded keys reach neither the
        # output nor, through elu's backward (0 * NaN), the gradients
        keep = key_padding_mask[:, None, :, None]
        k, v = torch.where(keep, k, 0.0), torch.where(keep, v, 0.0)
    fq, fk = elu_feature_map(q), elu_feature_map(k)
    if key_padding_mask is not None:
        fk = torch.where(keep, fk, 0.0)  # padded keys leave the kv sum and the normaliser
    if path == "fast":
        if attn_mask is not None:
            raise ValueError(f"{name}: `attn_mask` is not supported on the fast path: {WHY_NO_MASK}")
        if dropout_p > 0:
            raise ValueError(f"{name}: `dropout_p` > 0 is not supported on the fast path: {WHY_NO_DROPOUT}")
        if not is_causal:
            return _linear_noncausal(fq, fk, v)
        if Nk > Nq:  # keys after the last query are never visible
            fk, v = fk[:, :, :Nq], v[:, :, :Nq]
        elif Nk < Nq:
            fk, v = F.pad(fk, (0, 0, 0, Nq - Nk)), F.pad(v, (0, 0, 0, Nq - Nk))
        return _linear_causal(fq, fk, v, chunk)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        raise TypeError(f"{name}: linear attention needs a boolean `attn_mask` (a float mask added to scores has no kernel meaning)")
    a = fq @ fk.transpose(-2, -1)
    mask = combine_masks(attn_mask, key_padding_mask, is_causal, Nq, Nk, q.device, q.dtype)
    if mask is not None:
        a = a.masked_fill(~mask, 0.0)
    w = _div(a, a.sum(-1, keepdim=True))
    out = dropout_weights(w, dropout_p) @ v
    return (out, w) if need_weights else out


def _check_linear(scale, chunk_size, name):
    if scale is not None:
        raise ValueError(f"{name}: `scale` has no effect on linear attention (no softmax temperature); pass None")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"{name}: `chunk_size` must be a positive int, got {chunk_size!r}")


def linear_attention(
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
    chunk_size: int = 64,
):
    """Linear attention with ``Phi = elu + 1``; weights ``Phi(q_i)^T Phi(k_j) / h(q_i)``.

    Fast path: O(N) (causal via chunked cumulative sums of size ``chunk_size``); it supports
    ``key_padding_mask`` and ``is_causal`` but not ``attn_mask``/dropout (use impl='reference').
    """
    name = "linear_attention"
    path = check_common(q, k, v, attn_mask, key_padding_mask, dropout_p, impl, need_weights, name=name)
    _check_linear(scale, chunk_size, name)
    return _linear_core(
        q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
        dropout_p=dropout_p, path=path, need_weights=need_weights, chunk=chunk_size, name=name,
    )


def linear_bn_attention(
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
    chunk_size: int = 64,
):
    """Linear attention on BN-normalised ``q^ = (q - beta*mu)/s``, ``k^ = (k - beta*mu)/s``."""
    name = "linear_bn_attention"
    path = check_common(q, k, v, attn_mask, key_padding_mask, dropout_p, impl, need_weights, name=name)
    _check_linear(scale, chunk_size, name)
    check_beta_eps(beta, eps, name=name)
    Nq, Nk = q.shape[2], k.shape[2]
    valid = None if key_padding_mask is None else key_padding_mask[:, None, :]
    if key_padding_mask is not None:
        k = torch.where(key_padding_mask[:, None, :, None], k, 0.0)
    if is_causal:
        mu_q, s2_q = key_statistics(k, valid, upto=causal_upto(Nq, Nk, q.device), eps=eps)
        mu_k, s2_k = key_statistics(k, valid, upto=torch.arange(Nk, device=q.device), eps=eps)
    else:
        mu_q, s2_q = key_statistics(k, valid, eps=eps)
        mu_k, s2_k = mu_q, s2_q
    qh = (q - beta * mu_q) / s2_q.sqrt()
    kh = (k - beta * mu_k) / s2_k.sqrt()
    return _linear_core(
        qh, kh, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
        dropout_p=dropout_p, path=path, need_weights=need_weights, chunk=chunk_size, name=name,
    )


_LINEAR_FEATURES = {"attn_mask": reference_only(WHY_NO_MASK), "attn_drop": reference_only(WHY_NO_DROPOUT)}
_CHUNK = Option(64, positive_int, "query/key chunk length of the causal O(N) path")

register(
    "linear",
    linear_attention,
    options={"chunk_size": _CHUNK},
    features=_LINEAR_FEATURES,
    summary="linear attention, Phi = elu + 1; O(N) fast path",
    order=1,
)
register(
    "linear-bn",
    linear_bn_attention,
    options={**BN_OPTIONS, "chunk_size": _CHUNK},
    features=_LINEAR_FEATURES,
    summary="linear attention on BN-normalised queries/keys; O(N) fast path",
    order=6,
)
