"""Shared validation, mask handling and small numerics for the functional API.

Conventions (SDPA's, see docs/architecture.md): tensors are ``(B, H, N, D)``;
a boolean ``attn_mask`` is True where a query may attend, a float one is added
to the scores; ``key_padding_mask`` is ``(B, Nk)`` bool with True = real token;
``is_causal`` lets query ``i`` see keys ``j <= i`` (top-left aligned).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .registry import finite_float, positive_finite_float

IMPLS = ("auto", "fast", "reference")


def check_qkv(q: Tensor, k: Tensor, v: Optional[Tensor], *, name: str = "attention") -> None:
    """Validate ``q (B,H,Nq,D)``, ``k (B,H,Nk,D)``, ``v (B,H,Nk,Dv)``: rank, dtype, device, sizes."""
    pairs = [("q", q), ("k", k)] + ([("v", v)] if v is not None else [])
    for arg, t in pairs:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: `{arg}` must be a torch.Tensor of shape (B, H, N, D), got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: `{arg}` must have shape (B, H, N, D) (4 dims), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: `{arg}` must be a floating-point tensor, got dtype {t.dtype}")
    for arg, t in pairs[1:]:
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: `{arg}` has dtype {t.dtype} but `q` has {q.dtype}; all must match")
        if t.device != q.device:
            raise ValueError(f"{name}: `{arg}` is on {t.device} but `q` is on {q.device}")
    if k.shape[:2] != q.shape[:2]:
        raise ValueError(f"{name}: `k` must share (B, H) = {tuple(q.shape[:2])} with `q`, got {tuple(k.shape)}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{name}: `k` must have head dim D={q.shape[-1]} like `q`, got {tuple(k.shape)}")
    if v is not None and (v.shape[:2] != q.shape[:2] or v.shape[2] != k.shape[2]):
        raise ValueError(
            f"{name}: `v` must have shape (B, H, Nk, Dv) = ({q.shape[0]}, {q.shape[1]}, {k.shape[2]}, Dv), got {tuple(v.shape)}"
        )
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError(f"{name}: sequence lengths must be >= 1, got Nq={q.shape[2]}, Nk={k.shape[2]}")


def check_key_padding_mask(kpm: Optional[Tensor], B: int, Nk: int, device, *, name: str = "attention") -> None:
    """``key_padding_mask`` must be a bool tensor of shape ``(B, Nk)`` (True = keep)."""
    if kpm is None:
        return
    if not isinstance(kpm, Tensor):
        raise TypeError(f"{name}: `key_padding_mask` must be a bool tensor (B, Nk), got {type(kpm).__name__}")
    if kpm.dtype != torch.bool:
        raise TypeError(f"{name}: `key_padding_mask` must have dtype torch.bool (True = keep), got {kpm.dtype}")
    if tuple(kpm.shape) != (B, Nk):
        raise ValueError(f"{name}: `key_padding_mask` must have shape (B, Nk) = ({B}, {Nk}), got {tuple(kpm.shape)}")
    if kpm.device != device:
        raise ValueError(f"{name}: `key_padding_mask` is on {kpm.device}, expected {device}")


def check_attn_mask(mask: Optional[Tensor], B: int, H: int, Nq: int, Nk: int, dtype, *, name: str = "attention") -> None:
    """``attn_mask``: bool (True = attend) or float of the inputs' dtype, broadcastable to (B, H, Nq, Nk)."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name}: `attn_mask` must be a tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool and mask.dtype != dtype:
        raise TypeError(
            f"{name}: `attn_mask` must be torch.bool (True = attend) or float {dtype} (added to scores), got {mask.dtype}"
        )
    try:
        shape = torch.broadcast_shapes(tuple(mask.shape), (B, H, Nq, Nk))
    except RuntimeError:
        shape = None
    if shape != (B, H, Nq, Nk) or mask.dim() > 4:
        raise ValueError(f"{name}: `attn_mask` of shape {tuple(mask.shape)} is not broadcastable to (B, H, Nq, Nk) = {(B, H, Nq, Nk)}")


def check_common(q, k, v, attn_mask, key_padding_mask, dropout_p, impl, need_weights, *, name: str) -> str:
    """Run every common check and return the resolved implementation (``"fast"`` or ``"reference"``)."""
    check_qkv(q, k, v, name=name)
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    check_key_padding_mask(key_padding_mask, B, Nk, q.device, name=name)
    check_attn_mask(attn_mask, B, H, Nq, Nk, q.dtype, name=name)
    if not (isinstance(dropout_p, (int, float)) and 0.0 <= dropout_p < 1.0):
        raise ValueError(f"{name}: `dropout_p` must be a float in [0, 1), got {dropout_p!r}")
    return resolve_impl(impl, need_weights, name=name)


def resolve_impl(impl: str, need_weights: bool, *, name: str) -> str:
    """``"auto"`` -> fast unless weights are requested; ``"fast"`` cannot return weights."""
    if impl not in IMPLS:
        raise ValueError(f"{name}: `impl` must be one of {IMPLS}, got {impl!r}")
    if impl == "fast" and need_weights:
        raise ValueError(
            f"{name}: need_weights=True needs the reference path (the fast path never materialises the weights); "
            "use impl='reference' or impl='auto'"
        )
    if impl == "auto":
        return "reference" if need_weights else "fast"
    return impl


def default_scale(scale: Optional[float], D: int) -> float:
    """Softmax temperature: ``scale`` or ``1/sqrt(D)``."""
    return 1.0 / math.sqrt(D) if scale is None else float(scale)


def causal_bool(Nq: int, Nk: int, device) -> Tensor:
    """``(Nq, Nk)`` bool, True where key ``j <= i`` (top-left aligned, as SDPA)."""
    return torch.ones(Nq, Nk, dtype=torch.bool, device=device).tril()


def combine_masks(attn_mask, key_padding_mask, is_causal, Nq: int, Nk: int, device, dtype) -> Optional[Tensor]:
    """Merge the three mask inputs into one bool (True = attend) or additive float mask.

    Returns None when nothing is masked. Shapes broadcast to ``(B, H, Nq, Nk)``.
    """
    keep: Optional[Tensor] = None
    if key_padding_mask is not None:
        keep = key_padding_mask[:, None, None, :]
    if is_causal:
        c = causal_bool(Nq, Nk, device)
        keep = c if keep is None else keep & c
    if attn_mask is None:
        return keep
    if attn_mask.dtype == torch.bool:
        return attn_mask if keep is None else attn_mask & keep
    if keep is None:
        return attn_mask
    return attn_mask + torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill(~keep, float("-inf"))


def apply_mask(scores: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Add a float mask or set disallowed (False) entries of a bool mask to ``-inf``."""
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask


def safe_softmax(scores: Tensor) -> Tensor:
    """Row softmax that returns an all-zero row (not NaN) when every entry is ``-inf``."""
    m = scores.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
    e = torch.exp(scores - m)
    s = e.sum(dim=-1, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


def zero_padded(x: Tensor, key_padding_mask: Optional[Tensor]) -> Tensor:
    """Replace padded keys/values (``key_padding_mask`` False) by 0 so NaN/inf there cannot leak (0*NaN)."""
    if key_padding_mask is None:
        return x
    return x.masked_fill(~key_padding_mask[:, None, :, None], 0.0)


def dropout_weights(w: Tensor, p: float) -> Tensor:
    """Dropout on attention weights (always applied when ``p > 0``, like SDPA's ``dropout_p``)."""
    return torch.nn.functional.dropout(w, p=p, training=True) if p > 0 else w


def check_beta_eps(beta, eps, *, name: str) -> None:
    """``beta``: finite float (weight on the key mean); ``eps``: positive finite float."""
    finite_float(beta, option="beta", name=name)
    positive_finite_float(eps, option="eps", name=name)
