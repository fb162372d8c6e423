"""Primal-Attention (Chen et al., NeurIPS 2023): self-attention via asymmetric kernel SVD in the primal.

The attention kernel ``kappa(q_i, k_j) = phi(q_i)^T phi(k_j)`` is asymmetric; its KSVD has the
primal representation with left/right projection scores

``e(x_i) = W_e^T phi(q_i)``, ``r(x_i) = W_r^T phi(k_i)``  (each of rank ``s``),

and the layer outputs ``[e(x_i), r(x_i)] W_c`` (``W_c`` lives in the module). As in the
authors' code (github.com/yingyichen-cyy/PrimalAttention), ``phi`` normalises to the unit
sphere (cosine kernel) and ``W_e, W_r`` are data-dependent, ``W_e = X_sub^T W~_e``, built from
the input sampled at ``n`` evenly spaced positions (:func:`sample_positions`,
:func:`primal_projections`). The KSVD objective is added to the training loss via
:func:`ksvd_loss`.

Where our defaults could differ from the authors' code, the authors' behaviour is the default
and the alternative is an explicit option (see docs/primal.md):

* ``positions="linspace-trunc"``: ``torch.linspace(0, L-1, n, dtype=int)`` (truncation), all
  ``L`` tokens when ``L <= n`` (their vision code); ``"round"`` rounds instead (this library's earlier rule).
* ``reduction="batch-mean-squared"`` in :func:`ksvd_loss`: the means run over the whole batch
  before squaring; ``"per-sample"`` squares each sample's mean, then averages.
* ``init="authors"`` (in ``nn.Attention``): ``orthogonal_`` on the 3-D ``(H, n, s)`` tensor;
  ``"per-head"`` makes each head's ``(n, s)`` block orthonormal.

Unlike the authors' LRA code, sample positions use each sequence's *real* length (from
``key_padding_mask``), so a sequence gives the same output alone or in any padded batch.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import check_common

FEATURE_MAPS = ("cos",)
POSITIONS = ("linspace-trunc", "round")
KSVD_REDUCTIONS = ("batch-mean-squared", "per-sample")
INITS = ("authors", "per-head")


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


def unit_rows(x: Tensor, keep: Optional[Tensor] = None) -> Tensor:
    """``phi(x) = x / max(||x||_2, eps)`` over the last dim; rows with ``keep`` False are exactly 0.

    ``eps = max(1e-12, finfo.tiny)``: 1e-12 as in the authors' ``F.normalize`` for fp32/fp64/bf16,
    but representable in float16 (where 1e-12 underflows to 0 and a zero row gives 0/0 = NaN).
    ``keep`` (broadcastable to ``x[..., :1]``) is applied with ``torch.where`` before and after,
    so NaN/inf in dropped rows reach neither the output nor any gradient.
    """
    eps = max(1e-12, torch.finfo(x.dtype).tiny)
    if keep is None:
        return F.normalize(x, p=2.0, dim=-1, eps=eps)
    safe = torch.where(keep, x, torch.ones((), dtype=x.dtype, device=x.device))
    return torch.where(keep, F.normalize(safe, p=2.0, dim=-1, eps=eps), torch.zeros((), dtype=x.dtype, device=x.device))


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
    non-causal. ``key_padding_mask`` (B, N) marks real tokens: since ``e(x_i)`` and ``r(x_i)``
    pair query and key of the same token, a padded position gets an all-zero score row (and
    zero gradient, whatever its q/k hold). ``need_weights=True`` also returns the asymmetric
    kernel ``phi(q_i)^T phi(k_j)`` (B, H, N, N) that the layer's KSVD factorises (cosine
    similarities, not a probability distribution); padded rows and columns are 0.
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
    keep = None if key_padding_mask is None else key_padding_mask[:, None, :, None]
    fq, fk = unit_rows(q, keep), unit_rows(k, keep)
    e, r = fq @ w_e, fk @ w_r
    out = torch.cat([e, r], dim=-1)
    if need_weights:
        return out, fq @ fk.transpose(-2, -1)
    return out


@lru_cache(maxsize=4096)
def _positions_for_length(L: int, n: int, mode: str) -> Tuple[Tuple[int, ...], int]:
    """(positions among the first ``L`` tokens, how many are used) for one sequence length."""
    if L == 0:
        return (0,) * n, 0
    if mode == "linspace-trunc":
        if L <= n:  # authors' vision code: embed_len <= n -> every token, W~ has L rows
            return tuple(range(L)) + (0,) * (n - L), L
        return tuple(torch.linspace(0, L - 1, n, dtype=torch.long).tolist()), n
    return tuple(torch.linspace(0, L - 1, n).round().long().tolist()), n


def sample_positions(lengths: Union[int, Sequence[int]], n: int, mode: str = "linspace-trunc") -> Tuple[Tensor, Tensor]:
    """Evenly spaced sample positions for sequences of real lengths ``lengths``.

    Returns ``(pos, valid)``, both ``(B, n)`` on the CPU: ``pos[b, j]`` indexes the real tokens of
    sequence ``b`` (0 = its first real token) and ``valid`` marks the slots in use.

    * ``"linspace-trunc"`` (authors): ``pos = torch.linspace(0, L-1, n, dtype=int)`` (float
      positions truncated, e.g. ``L=57, n=20 -> 0, 2, 5, 8, ...``); if ``L <= n`` every token
      is used once (``pos = 0..L-1``) and slots ``L..n-1`` are invalid, as the authors' vision
      code does with ``min(embed_len, n)`` rows of ``W~``. ``L = 0``: no valid slot.
    * ``"round"``: ``round(linspace(0, L-1, n))`` for every ``L`` (repeats positions if ``L < n``).
    """
    if mode not in POSITIONS:
        raise ValueError(f"sample_positions: `mode` must be one of {POSITIONS}, got {mode!r}")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"sample_positions: `n` must be a positive int, got {n!r}")
    lengths = [lengths] if isinstance(lengths, int) else [int(L) for L in lengths]
    if any(L < 0 for L in lengths):
        raise ValueError(f"sample_positions: `lengths` must be >= 0, got {lengths}")
    rows = [_positions_for_length(L, n, mode) for L in lengths]
    pos = torch.tensor([p for p, _ in rows], dtype=torch.long).view(len(rows), n)
    valid = torch.arange(n)[None, :] < torch.tensor([u for _, u in rows], dtype=torch.long)[:, None]
    return pos, valid


def init_projection_(w: Tensor, init: str = "authors") -> Tensor:
    """Orthogonal init of ``W~`` (H, n, s) in place.

    ``"authors"``: ``nn.init.orthogonal_`` on the 3-D tensor, i.e. the H flattened ``n*s`` rows
    are orthonormal (each head's ``W~`` has unit Frobenius norm, ``tr(W~_h^T W~_h) = 1``);
    ``"per-head"``: each head's ``(n, s)`` block has orthonormal columns (``W~_h^T W~_h = I``).
    """
    if init not in INITS:
        raise ValueError(f"init_projection_: `init` must be one of {INITS}, got {init!r}")
    with torch.no_grad():
        if init == "authors":
            torch.nn.init.orthogonal_(w)
        else:
            for h in range(w.shape[0]):
                torch.nn.init.orthogonal_(w[h])
    return w


def primal_projections(
    x: Tensor,
    w_e: Tensor,
    w_r: Tensor,
    num_heads: int,
    key_padding_mask: Optional[Tensor] = None,
    positions: str = "linspace-trunc",
) -> Tuple[Tensor, Tensor]:
    """Data-dependent projections ``W_e(X) = X_sub^T W~_e``, ``W_r(X) = X_sub^T W~_r`` per head.

    ``x``: ``(B, N, C)`` layer input, heads are contiguous channel blocks of ``C / num_heads``;
    ``w_e, w_r``: ``(H, n, s)`` learned ``W~``; returns two ``(B, H, C/H, s)`` tensors.
    ``X_sub`` holds the tokens at :func:`sample_positions` of each sequence's *real* tokens
    (``key_padding_mask`` (B, N), True = real; None = all ``N``), so the result does not depend
    on how much padding a batch has, nor on what the padding holds. Unused slots (``L < n``)
    contribute 0, i.e. only the first ``L`` rows of ``W~`` are used.
    """
    name = "primal_projections"
    if not isinstance(x, Tensor) or x.dim() != 3 or not x.is_floating_point():
        got = (tuple(x.shape), x.dtype) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: `x` must be a floating-point tensor (B, N, C), got {got}")
    B, N, C = x.shape
    if C % num_heads:
        raise ValueError(f"{name}: channels C={C} must be divisible by num_heads={num_heads}")
    for arg, w in (("w_e", w_e), ("w_r", w_r)):
        if not isinstance(w, Tensor) or w.dim() != 3 or w.shape[0] != num_heads or w.shape != w_e.shape:
            got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(f"{name}: `{arg}` must be (H={num_heads}, n, s), the same for w_e and w_r, got {got}")
    n = w_e.shape[1]
    if key_padding_mask is None:
        pos, valid = sample_positions([N], n, positions)
        tok = pos.to(x.device).expand(B, n)
    else:
        if key_padding_mask.dtype != torch.bool or tuple(key_padding_mask.shape) != (B, N):
            raise ValueError(f"{name}: `key_padding_mask` must be bool (B, N) = ({B}, {N}), got "
                             f"{key_padding_mask.dtype} {tuple(key_padding_mask.shape)}")
        pos, valid = sample_positions(key_padding_mask.sum(1).tolist(), n, positions)
        # real tokens first, in order (stable sort), so pos[b, j] = j-th sampled real token
        order = torch.sort((~key_padding_mask).to(torch.uint8), dim=1, stable=True).indices
        tok = order.gather(1, pos.to(x.device))
    xs = x.gather(1, tok[..., None].expand(B, n, C))
    xs = torch.where(valid.to(x.device)[..., None], xs, torch.zeros((), dtype=x.dtype, device=x.device))
    xs = xs.view(B, n, num_heads, C // num_heads).permute(0, 2, 3, 1)  # (B, H, d, n)
    return xs @ w_e.to(x.dtype), xs @ w_r.to(x.dtype)


def ksvd_loss(
    e: Tensor,
    r: Tensor,
    lam: Tensor,
    w_e: Tensor,
    w_r: Tensor,
    mask: Optional[Tensor] = None,
    reduction: str = "batch-mean-squared",
) -> Tensor:
    """KSVD regulariser of Primal-Attention (as in the authors' code)

    ``J = ( 1/2 mean_{b,h,i} ||e_i Lambda_h||^2 + 1/2 mean_{b,h,i} ||r_i Lambda_h||^2 - tr(mean_h W~_e,h^T W~_r,h) )^2``

    ``e, r``: ``(B, H, N, s)`` projection scores; ``lam``: ``(H, s)`` singular values;
    ``w_e, w_r``: ``(H, Ns, s)`` the learned (data-independent) projection parameters;
    ``mask``: optional ``(B, N)`` bool, True = position counts in the means (padded ones do not,
    whatever they hold). ``reduction="batch-mean-squared"`` (authors) takes the means over the
    batch and all real tokens, then squares; ``"per-sample"`` squares each sample's mean over
    its own real tokens and averages the squares over the batch.
    """
    if reduction not in KSVD_REDUCTIONS:
        raise ValueError(f"ksvd_loss: `reduction` must be one of {KSVD_REDUCTIONS}, got {reduction!r}")
    if e.shape != r.shape or e.dim() != 4:
        raise ValueError(f"ksvd_loss: `e` and `r` must both be (B, H, N, s), got {tuple(e.shape)} and {tuple(r.shape)}")
    B, H, N, s = e.shape
    if tuple(lam.shape) != (H, s):
        raise ValueError(f"ksvd_loss: `lam` must have shape (H, s) = ({H}, {s}), got {tuple(lam.shape)}")
    if w_e.dim() != 3 or w_e.shape != w_r.shape or w_e.shape[0] != H or w_e.shape[2] != s:
        raise ValueError(f"ksvd_loss: `w_e`, `w_r` must both be (H, Ns, s) with H={H}, s={s}, got {tuple(w_e.shape)}, {tuple(w_r.shape)}")
    le = ((e * lam[None, :, None, :]) ** 2).sum(-1)  # (B, H, N)
    lr = ((r * lam[None, :, None, :]) ** 2).sum(-1)
    dims = (0, 1, 2) if reduction == "batch-mean-squared" else (1, 2)
    if mask is None:
        me, mr = le.mean(dim=dims), lr.mean(dim=dims)
    else:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (B, N):
            got = (mask.dtype, tuple(mask.shape)) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"ksvd_loss: `mask` must be bool (B, N) = ({B}, {N}), got {got}")
        m = mask[:, None, :].expand_as(le)
        zero = torch.zeros((), dtype=le.dtype, device=le.device)
        cnt = m.sum(dim=dims).to(le.dtype).clamp_min(1.0)
        me = torch.where(m, le, zero).sum(dim=dims) / cnt
        mr = torch.where(m, lr, zero).sum(dim=dims) / cnt
    trace = torch.einsum("hps,hpt->hst", w_e, w_r.to(w_e.dtype)).mean(0).diagonal().sum()
    return ((me / 2 + mr / 2 - trace) ** 2).mean()


# --------------------------------------------------------------------------- registry entry
# Kept at the end of the file (and self-contained) so that rewrites of the math above leave it intact.
# Options here are the *layer's* options (nn.Attention builds W_e(X), W_r(X) from them); the
# function itself takes the projections ``w_e``/``w_r``.
from .registry import Option, one_of, optional_positive_int, positive_int, register, unsupported  # noqa: E402


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
        "positions": Option("linspace-trunc", one_of(*POSITIONS), "sample positions for W_e(X), W_r(X)"),
        "ksvd_reduction": Option("batch-mean-squared", one_of(*KSVD_REDUCTIONS), "KSVD loss reduction"),
        "init": Option("authors", one_of(*INITS), "orthogonal init of W~_e, W~_r"),
    },
    features={
        "causal": unsupported("its projections W_e(X), W_r(X) are built from the whole sequence"),
        "attn_mask": unsupported("the primal form has no score matrix to mask"),
        "cross": unsupported("it pairs e(x_i) with r(x_i), so queries and keys must be the same tokens"),
        "attn_drop": unsupported("the primal form has no attention weights to drop; use attn_drop=0.0"),
    },
    needs_values=False,
    flags=("primal",),
    module_options=("low_rank", "num_samples", "positions", "ksvd_reduction", "init"),
    check=_primal_checks,
    summary="Primal-Attention (KSVD in the primal); self-attention layer with its own projections",
    order=7,
)
