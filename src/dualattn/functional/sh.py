"""Attention-SH (scaled heads) and BN+SH.

Head ``h`` fits its SVR on ``N_h = ceil(N / r_h)`` training pairs: keys and values are
downsampled along the sequence by its factor ``r_h`` (queries keep length N):
``out_i^h = sum_b softmax_b(q_i^T P_r(k)_b * scale) P_r(v)_b``.

Downsampling ``P_r`` (block ``b`` covers keys ``[b*r, (b+1)*r - 1]``):

* ``"avg"``    mean of the block's valid (non-padded) members;
* ``"stride"`` the block's first key ``k_{b*r}`` (strided subsampling);
* ``"conv"``   learned depthwise conv with kernel = stride = r: ``sum_t w[d, t] k_{b*r+t}(d)``
  over valid members (padded members contribute 0).

A pooled key with no valid member is masked. Causal: query ``i`` sees block ``b`` only if
every position the block covers is ``<= i``: ``(b+1) r - 1 <= i`` for ``"avg"``/``"conv"``
(the block's nominal span, not clamped to ``N``), ``b*r <= i`` for ``"stride"`` (it reads
only key ``b*r``). The query's own incomplete block is excluded, and so is a final partial
block (``N % r != 0``): it is visible to no query of the sequence. The rule does not involve
``N``, so row ``i`` depends only on tokens ``<= i`` and not on how many follow (prefix and
right-padding invariant). A query with no visible block (``i < r - 1`` for avg/conv, or only
padded blocks visible) outputs zeros, and BN+SH's running statistics of a query run over its
visible valid pooled keys only (none: ``mu = 0``, ``s2 = eps``).

Fast path: heads are grouped by factor and SDPA is called once per group, so no
``N x N`` tensor exists for groups with ``r > 1``. With average pooling, no padding and
``r | N`` for every group, splitting into groups and pooling is one autograd node
(``_SplitAvgPool``) whose backward writes every group's key/value gradient straight into
one full-size buffer (no per-group expanded gradients followed by a ``cat``).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import (
    apply_mask,
    check_beta_eps,
    check_common,
    default_scale,
    dropout_weights,
    safe_softmax,
    zero_padded,
)
from .bn import BN_OPTIONS, bn_logits_reference, bn_query_transform, key_statistics
from .registry import Feature, Option, one_of, register

POOLS = ("avg", "stride", "conv")

#: Why SH cannot take an ``attn_mask`` when some head pools its keys (registry + errors).
WHY_NO_MASK = ("a mask over the original keys has no unique meaning for pooled keys (factors > 1); "
               "use key_padding_mask / is_causal, or all factors 1")


def default_factors(num_heads: int) -> List[int]:
    """``2**floor(4h/H)``: for 8 heads ``[1, 1, 2, 2, 4, 4, 8, 8]``."""
    return [2 ** ((4 * h) // num_heads) for h in range(num_heads)]


def check_factors(factors, num_heads: int, *, name: str) -> List[int]:
    """Validate ``factors``: a sequence of ``num_heads`` positive ints."""
    if factors is None:
        raise ValueError(f"{name}: `factors` is required (one downsampling factor per head, length H={num_heads})")
    if isinstance(factors, Tensor):
        factors = factors.tolist()
    try:
        fs = list(factors)
    except TypeError:
        raise TypeError(f"{name}: `factors` must be a sequence of ints, got {type(factors).__name__}") from None
    if len(fs) != num_heads:
        raise ValueError(f"{name}: `factors` must have one entry per head (length H={num_heads}), got {len(fs)}: {fs}")
    for f in fs:
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise ValueError(f"{name}: every factor must be an int >= 1, got {fs}")
    return fs


def group_heads(factors: Sequence[int]) -> Dict[int, List[int]]:
    """Heads grouped by factor, in order of first appearance."""
    groups: Dict[int, List[int]] = {}
    for h, f in enumerate(factors):
        groups.setdefault(f, []).append(h)
    return groups


class Pooled:
    """Downsampled keys/values of one head group plus what masking needs.

    ``k, v``: ``(B, Hg, Nb, D)``; ``valid``: ``(B, Nb)`` bool or None (all valid);
    ``last``: ``(Nb,)`` largest position each block covers (causal visibility: ``last[b] <= i``;
    ``(b+1) r - 1`` for avg/conv even for a partial last block, ``b r`` for stride); ``member_w()``:
    ``(B or 1, Hg or 1, Nk)`` weight of key ``j`` inside its block (computed only for need_weights).
    """

    def __init__(self, k, v, valid, last, r, pool, Nk, member_w=None):
        self.k, self.v, self.valid, self.last = k, v, valid, last
        self.r, self.pool, self.Nk = r, pool, Nk
        self._member_w = member_w

    def member_w(self):
        return self._member_w() if callable(self._member_w) else self._member_w


class _SplitAvgPool(torch.autograd.Function):
    """``x (B, H, N, D)`` -> per contiguous head group ``g``: ``mean`` over blocks of ``factors[g]`` keys.

    Forward ``P_r(x)_b = (1/r) sum_{t<r} x_{b r + t}`` (a view for ``r = 1``); backward
    ``dL/dx_{b r + t} = (1/r) dL/dP_r(x)_b``, written into one preallocated gradient.
    Requires ``N % r == 0`` for every factor.
    """

    @staticmethod
    def forward(ctx, x: Tensor, sizes: List[int], factors: List[int]):
        ctx.sizes, ctx.factors, ctx.shape = sizes, factors, x.shape
        B, _, N, D = x.shape
        return tuple(
            part if r == 1 else part.view(B, part.shape[1], N // r, r, D).mean(3)
            for part, r in zip(x.split(sizes, 1), factors)
        )

    @staticmethod
    def backward(ctx, *grads):  # autograd materialises unused outputs' grads as zeros
        B, _, N, D = ctx.shape
        gx = grads[0].new_empty(ctx.shape)
        for dst, g, r in zip(gx.split(ctx.sizes, 1), grads, ctx.factors):
            if r == 1:
                dst.copy_(g)
            else:
                dst.view(B, dst.shape[1], N // r, r, D).copy_((g / r).unsqueeze(3).expand(-1, -1, -1, r, -1))
        return gx, None, None


def _prepooled_avg(kp: Tensor, vp: Tensor, r: int, Nk: int) -> Pooled:
    """``Pooled`` for unpadded average pooling with ``r | Nk`` (see ``pool_kv``)."""
    last = (torch.arange(Nk // r, device=kp.device) + 1) * r - 1

    def mw_avg():
        return torch.full((1, 1, Nk), 1.0 / r, dtype=kp.dtype, device=kp.device)

    return Pooled(kp, vp, None, last, r, "avg", Nk, mw_avg)


def pool_kv(
    k: Tensor,
    v: Tensor,
    r: int,
    pool: str,
    key_padding_mask: Optional[Tensor],
    wk: Optional[Tensor] = None,
    wv: Optional[Tensor] = None,
) -> Pooled:
    """Downsample ``k, v (B, Hg, Nk, .)`` by ``r`` along the sequence (padded keys already zeroed)."""
    B, Hg, Nk, _ = k.shape
    dev = k.device
    Nb = math.ceil(Nk / r)
    ar = torch.arange(Nb, device=dev)
    if r == 1:
        mw = None if key_padding_mask is None else key_padding_mask[:, None, :].to(k.dtype)
        return Pooled(k, v, key_padding_mask, torch.arange(Nk, device=dev), 1, pool, Nk, mw)
    if pool == "stride":
        valid = None if key_padding_mask is None else key_padding_mask[:, ::r]

        def mw_stride():
            mw = torch.zeros(1, 1, Nk, dtype=k.dtype, device=dev)
            mw[..., ::r] = 1.0
            return mw if key_padding_mask is None else mw * key_padding_mask[:, None, :].to(k.dtype)

        return Pooled(k[:, :, ::r], v[:, :, ::r], valid, ar * r, r, pool, Nk, mw_stride)
    last = (ar + 1) * r - 1  # nominal span: a partial last block is visible to no query
    pad = Nb * r - Nk
    if key_padding_mask is None:
        m = torch.ones(1, Nk, dtype=torch.bool, device=dev)
    else:
        m = key_padding_mask
    mp = F.pad(m, (0, pad), value=False) if pad else m  # (B or 1, Nb*r)
    cnt = mp.view(-1, Nb, r).sum(-1)  # (B or 1, Nb)
    valid = None if key_padding_mask is None else cnt > 0
    kb = (F.pad(k, (0, 0, 0, pad)) if pad else k).view(B, Hg, Nb, r, k.shape[-1])
    vb = (F.pad(v, (0, 0, 0, pad)) if pad else v).view(B, Hg, Nb, r, v.shape[-1])
    if pool == "avg":
        if key_padding_mask is None and pad == 0:
            kp, vp = kb.mean(3), vb.mean(3)
        else:
            denom = cnt.clamp_min(1).to(k.dtype)[:, None, :, None]
            kp, vp = kb.sum(3) / denom, vb.sum(3) / denom

        def mw_avg():
            inv = (1.0 / cnt.clamp_min(1).to(k.dtype)).repeat_interleave(r, dim=-1)[:, :Nk]
            return (inv * m.to(k.dtype))[:, None, :]

        return Pooled(kp, vp, valid, last, r, pool, Nk, mw_avg)
    if pool == "conv":
        kp = torch.einsum("bhnrd,hdr->bhnd", kb, wk)
        vp = torch.einsum("bhnrd,hdr->bhnd", vb, wv)

        def mw_conv():
            tap = wv.mean(1).repeat(1, Nb)[:, :Nk]  # (Hg, Nk): channel-mean of the value-conv tap on key j
            return tap[None] * m.to(k.dtype)[:, None, :]

        return Pooled(kp, vp, valid, last, r, pool, Nk, mw_conv)
    raise ValueError(f"`pool` must be one of {POOLS}, got {pool!r}")


def pooled_mask(p: Pooled, Nq: int, is_causal: bool, attn_mask: Optional[Tensor], dtype) -> Optional[Tensor]:
    """Bool/float mask over pooled keys: block validity, causal block visibility, attn_mask (r = 1 only)."""
    keep = None if p.valid is None else p.valid[:, None, None, :]
    if is_causal:
        c = p.last[None, :] <= torch.arange(Nq, device=p.last.device)[:, None]
        keep = c if keep is None else keep & c
    if attn_mask is None:
        return keep
    if keep is None:
        return attn_mask
    return _merge(attn_mask, keep, dtype)


def _merge(attn_mask: Tensor, keep: Tensor, dtype) -> Tensor:
    if attn_mask.dtype == torch.bool:
        return attn_mask & keep
    return attn_mask + torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, float("-inf"))


def expand_weights(w: Tensor, p: Pooled) -> Tensor:
    """Map weights over pooled keys ``(B, Hg, Nq, Nb)`` to the original keys ``(B, Hg, Nq, Nk)``.

    avg: ``w_b / |valid members of b|`` on each valid member (exact); stride: ``w_b`` on key ``b*r``
    (exact); conv: ``w_b`` times the channel-mean of the value-conv tap on key ``j``.
    """
    mw = p.member_w()
    if p.r == 1:
        return w if mw is None else w * mw[:, :, None, :]
    wr = w.repeat_interleave(p.r, dim=-1)[..., : p.Nk]
    return wr * mw[:, :, None, :]


def _causal_staircase(q: Tensor, kp: Tensor, vp: Tensor, r: int, pool: str, dropout_p: float, scale) -> Tensor:
    """Causal SH for one group (no padding, Nq = Nk = N) without any mask tensor.

    Write query ``i = m*r + t``. For avg/conv pooling it sees blocks ``b <= m`` if ``t = r-1`` and
    ``b <= m-1`` otherwise (so a partial last block, ``N % r != 0``, is seen by no query); for
    strided pooling it sees ``b <= m`` for every ``t``. Queries are regrouped by offset ``t``
    so every case is one SDPA call with ``is_causal=True`` (keys shifted by one block for ``b <= m-1``).
    """
    B, Hg, N, D = q.shape
    M, Dv = kp.shape[2], vp.shape[-1]
    q5 = F.pad(q, (0, 0, 0, M * r - N)).view(B, Hg, M, r, D).transpose(2, 3)  # (B, Hg, r, M, D)
    def gqa(qs: Tensor, ks: Tensor, vs: Tensor) -> Tensor:  # qs (B, Hg, T, L, D) over ks (B, Hg, S, D)
        T, L = qs.shape[2], qs.shape[3]
        o = F.scaled_dot_product_attention(qs.reshape(B, Hg * T, L, D), ks, vs, dropout_p=dropout_p,
                                           is_causal=True, scale=scale, enable_gqa=True)
        return o.view(B, Hg, T, L, Dv)

    if pool == "stride":
        return gqa(q5, kp, vp).transpose(2, 3).reshape(B, Hg, M * r, Dv)[:, :, :N]
    out5 = q.new_zeros(B, Hg, r, M, Dv)
    out5[:, :, r - 1 :] = gqa(q5[:, :, r - 1 :], kp, vp)
    if M > 1:
        out5[:, :, : r - 1, 1:] = gqa(q5[:, :, : r - 1, 1:], kp[:, :, : M - 1], vp[:, :, : M - 1])
    return out5.transpose(2, 3).reshape(B, Hg, M * r, Dv)[:, :, :N]


def _select(x: Tensor, heads: List[int]) -> Tensor:
    if heads == list(range(heads[0], heads[0] + len(heads))):
        return x.narrow(1, heads[0], len(heads))
    return x.index_select(1, torch.tensor(heads, device=x.device))


def _assemble(parts: List[Tuple[List[int], Tensor]], H: int) -> Tensor:
    order = [h for heads, _ in parts for h in heads]
    cat = torch.cat([t for _, t in parts], dim=1) if len(parts) > 1 else parts[0][1]
    if order == list(range(H)):
        return cat
    inv = torch.empty(H, dtype=torch.long)
    inv[torch.tensor(order)] = torch.arange(H)
    return cat.index_select(1, inv.to(cat.device))


def _check_conv(conv_weight_k, conv_weight_v, factors, D, Dv, ref: Tensor, *, name) -> None:
    for arg, ws, dim in (("conv_weight_k", conv_weight_k, D), ("conv_weight_v", conv_weight_v, Dv)):
        if ws is None or len(ws) != len(factors):
            raise ValueError(f"{name}: pool='conv' needs `{arg}`: a sequence of H={len(factors)} tensors of shape (D, r_h)")
        for h, (w, r) in enumerate(zip(ws, factors)):
            if r == 1:
                continue
            if not isinstance(w, Tensor) or tuple(w.shape) != (dim, r):
                got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
                raise ValueError(f"{name}: `{arg}[{h}]` must have shape (D, r_h) = ({dim}, {r}), got {got}")
            if w.dtype != ref.dtype or w.device != ref.device:
                raise TypeError(f"{name}: `{arg}[{h}]` must be {ref.dtype} on {ref.device}, got {w.dtype} on {w.device}")


def _sh_core(
    q, k, v, *, factors, pool, attn_mask, key_padding_mask, is_causal, dropout_p, scale, need_weights, impl,
    conv_weight_k, conv_weight_v, bn, beta, eps, name,
):
    path = check_common(q, k, v, attn_mask, key_padding_mask, dropout_p, impl, need_weights, name=name)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    fs = check_factors(factors, H, name=name)
    if pool not in POOLS:
        raise ValueError(f"{name}: `pool` must be one of {POOLS}, got {pool!r}")
    if attn_mask is not None and any(f > 1 for f in fs):
        raise ValueError(f"{name}: `attn_mask` is not supported with factors {fs}: {WHY_NO_MASK}")
    if pool == "conv":
        _check_conv(conv_weight_k, conv_weight_v, fs, D, v.shape[-1], q, name=name)
    if bn:
        check_beta_eps(beta, eps, name=name)
    sc = default_scale(scale, D)
    k, v = zero_padded(k, key_padding_mask), zero_padded(v, key_padding_mask)
    outs, weights = [], []
    groups = group_heads(fs)
    order = [h for heads in groups.values() for h in heads]
    contiguous = order == list(range(H))
    prepooled = (path == "fast" and contiguous and pool == "avg" and key_padding_mask is None
                 and all(Nk % r == 0 for r in groups))
    if contiguous:  # one split (its backward is a single cat), or split + pool in one node
        sizes = [len(hs) for hs in groups.values()]
        if prepooled:
            rs = list(groups)
            kv = zip(_SplitAvgPool.apply(k, sizes, rs), _SplitAvgPool.apply(v, sizes, rs))
        else:
            kv = zip(k.split(sizes, 1), v.split(sizes, 1))
        parts = [(qg, kg, vg) for qg, (kg, vg) in zip(q.split(sizes, 1), kv)]
    else:
        parts = [(_select(q, hs), _select(k, hs), _select(v, hs)) for hs in groups.values()]
    for (r, heads), (qg, kg, vg) in zip(groups.items(), parts):
        wk = wv = None
        if pool == "conv" and r > 1:
            wk = torch.stack([conv_weight_k[h] for h in heads])
            wv = torch.stack([conv_weight_v[h] for h in heads])
        p = _prepooled_avg(kg, vg, r, Nk) if prepooled else pool_kv(kg, vg, r, pool, key_padding_mask, wk, wv)
        mask = pooled_mask(p, Nq, is_causal, attn_mask, q.dtype)
        if bn:
            upto = None
            if is_causal:
                upto = torch.searchsorted(p.last, torch.arange(Nq, device=q.device), right=True) - 1
            valid = None if p.valid is None else p.valid[:, None, :]
            mu, s2 = key_statistics(p.k, valid, upto=upto, eps=eps)
        if path == "fast":
            qt = bn_query_transform(qg, mu, s2, beta) if bn else qg
            if mask is None:
                o = F.scaled_dot_product_attention(qt, p.k, p.v, dropout_p=dropout_p, scale=scale)
            elif r == 1 and is_causal and p.valid is None and attn_mask is None:  # plain causal: no mask tensor
                o = F.scaled_dot_product_attention(qt, p.k, p.v, dropout_p=dropout_p, is_causal=True, scale=scale)
            elif is_causal and p.valid is None and attn_mask is None and Nq == Nk:
                o = _causal_staircase(qt, p.k, p.v, r, pool, dropout_p, scale)
            else:
                o = F.scaled_dot_product_attention(qt, p.k, p.v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
        else:
            if bn:
                s = bn_logits_reference(qg, p.k, mu, s2, beta, sc)
            else:
                s = (qg @ p.k.transpose(-2, -1)) * sc
            w = safe_softmax(apply_mask(s, mask))
            o = dropout_weights(w, dropout_p) @ p.v
            if need_weights:
                weights.append((heads, expand_weights(w, p)))
        outs.append((heads, o))
    out = _assemble(outs, H)
    return (out, _assemble(weights, H)) if need_weights else out


def sh_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    factors: Sequence[int],
    pool: str = "avg",
    attn_mask: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    need_weights: bool = False,
    impl: str = "auto",
    conv_weight_k: Optional[Sequence[Optional[Tensor]]] = None,
    conv_weight_v: Optional[Sequence[Optional[Tensor]]] = None,
):
    """Attention-SH: head ``h`` attends over keys/values downsampled by ``factors[h]``.

    ``pool`` in ``"avg"`` (default), ``"stride"``, ``"conv"`` (then ``conv_weight_k/v``: per-head
    ``(D, r_h)`` depthwise kernels). All factors 1 is exactly softmax attention.
    """
    return _sh_core(
        q, k, v, factors=factors, pool=pool, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
        is_causal=is_causal, dropout_p=dropout_p, scale=scale, need_weights=need_weights, impl=impl,
        conv_weight_k=conv_weight_k, conv_weight_v=conv_weight_v, bn=False, beta=1.0, eps=1e-5, name="sh_attention",
    )


def bn_sh_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    factors: Sequence[int],
    pool: str = "avg",
    attn_mask: Optional[Tensor] = None,
    key_padding_mask: Optional[Tensor] = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: Optional[float] = None,
    need_weights: bool = False,
    impl: str = "auto",
    beta: float = 1.0,
    eps: float = 1e-5,
    conv_weight_k: Optional[Sequence[Optional[Tensor]]] = None,
    conv_weight_v: Optional[Sequence[Optional[Tensor]]] = None,
):
    """BN+SH: Attention-SH where each head's BN statistics come from its own downsampled keys.

    Causal: query ``i`` uses the running statistics of the pooled keys it may see.
    """
    return _sh_core(
        q, k, v, factors=factors, pool=pool, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
        is_causal=is_causal, dropout_p=dropout_p, scale=scale, need_weights=need_weights, impl=impl,
        conv_weight_k=conv_weight_k, conv_weight_v=conv_weight_v, bn=True, beta=beta, eps=eps,
        name="bn_sh_attention",
    )


def _factors_option(value, *, option: str, name=None, ctx=None):
    """``None`` -> ``default_factors(num_heads)`` when the head count is known; else a list of H ints >= 1."""
    H = (ctx or {}).get("num_heads")
    if H is None:
        if value is None:
            return None
        return check_factors(value, len(value) if hasattr(value, "__len__") else 0, name=name or option)
    return check_factors(default_factors(H) if value is None else value, H, name=name or option)


def _mask_ok(options) -> bool:
    fs = options.get("factors")
    return fs is None or all(f == 1 for f in fs)


SH_OPTIONS = {
    "factors": Option(None, _factors_option, "per-head key downsampling factors (default 2**floor(4h/H))"),
    "pool": Option("avg", one_of(*POOLS), "how a block of r keys is pooled: " + ", ".join(POOLS)),
}
_SH_FEATURES = {"attn_mask": Feature(why=WHY_NO_MASK, condition=_mask_ok, when="factors all 1")}

register(
    "sh",
    sh_attention,
    options=SH_OPTIONS,
    features=_SH_FEATURES,
    flags=("pooled_heads",),
    summary="Attention-SH: head h attends over keys/values downsampled by factors[h]",
    order=4,
)
register(
    "bn+sh",
    bn_sh_attention,
    options={**SH_OPTIONS, **BN_OPTIONS},
    features=_SH_FEATURES,
    flags=("pooled_heads",),
    summary="BN+SH: Attention-SH with per-head BN statistics of the pooled keys",
    order=5,
)
