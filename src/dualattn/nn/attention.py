"""``dualattn.nn.Attention``: multi-head attention with a selectable primal-dual variant.

Multi-head = H independent SVRs (one per head), concatenated and mixed by ``W_O``:
``Attention(x) = concat_h f_h(x W_Q^h, c W_K^h, c W_V^h) W_O`` with ``c = context`` (or ``x``)
and ``f_h`` one of the functions in :mod:`dualattn.functional`.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from .. import functional as DF
from ..functional.primal import INITS as PRIMAL_INITS
from ..functional.primal import KSVD_REDUCTIONS, POSITIONS, init_projection_, primal_projections
from ..functional.sh import POOLS, check_factors, default_factors

VARIANTS = ("softmax", "linear", "sparse", "bn", "sh", "bn+sh", "linear-bn", "primal")

#: Options each variant accepts (passed as ``**variant_options``) and their defaults.
VARIANT_OPTIONS: Dict[str, Dict[str, object]] = {
    "softmax": {},
    "linear": {"chunk_size": 64},
    "sparse": {"pattern": "local", "window": 16, "stride": 8, "topk": 32, "chunk_size": 256},
    "bn": {"beta": 1.0, "eps": 1e-5},
    "sh": {"factors": None, "pool": "avg"},
    "bn+sh": {"factors": None, "pool": "avg", "beta": 1.0, "eps": 1e-5},
    "linear-bn": {"beta": 1.0, "eps": 1e-5, "chunk_size": 64},
    "primal": {"low_rank": 20, "num_samples": None, "positions": "linspace-trunc",
               "ksvd_reduction": "batch-mean-squared", "init": "authors"},
}

#: What each variant supports; ``why_not`` explains an unsupported feature.
CAPABILITIES: Dict[str, Dict[str, object]] = {
    "softmax": {"attn_mask": True, "causal": True, "cross": True, "attn_drop_fast": True},
    "sparse": {"attn_mask": True, "causal": True, "cross": True, "attn_drop_fast": True},
    "bn": {"attn_mask": True, "causal": True, "cross": True, "attn_drop_fast": True},
    "sh": {"attn_mask": "factors all 1", "causal": True, "cross": True, "attn_drop_fast": True},
    "bn+sh": {"attn_mask": "factors all 1", "causal": True, "cross": True, "attn_drop_fast": True},
    "linear": {"attn_mask": "reference path only", "causal": True, "cross": True, "attn_drop_fast": False},
    "linear-bn": {"attn_mask": "reference path only", "causal": True, "cross": True, "attn_drop_fast": False},
    "primal": {"attn_mask": False, "causal": False, "cross": False, "attn_drop_fast": False},
}

WHY_NOT = {
    ("primal", "causal"): "its projections W_e(X), W_r(X) are built from the whole sequence",
    ("primal", "attn_mask"): "the primal form has no score matrix to mask",
    ("primal", "cross"): "it pairs e(x_i) with r(x_i), so queries and keys must be the same tokens",
    ("primal", "attn_drop"): "the primal form has no attention weights to drop",
    ("linear", "attn_mask"): "an arbitrary mask breaks the O(N) factorisation; set attn.fused = False for the O(N^2) reference path",
    ("linear-bn", "attn_mask"): "an arbitrary mask breaks the O(N) factorisation; set attn.fused = False for the O(N^2) reference path",
    ("linear", "attn_drop"): "the O(N) path never forms the weights; set attn.fused = False to use dropout",
    ("linear-bn", "attn_drop"): "the O(N) path never forms the weights; set attn.fused = False to use dropout",
    ("sh", "attn_mask"): "a mask over the original keys has no unique meaning for pooled keys (factors > 1)",
    ("bn+sh", "attn_mask"): "a mask over the original keys has no unique meaning for pooled keys (factors > 1)",
}

_FUSED_DEFAULT = os.environ.get("DUALATTN_FUSED_ATTN", "1") != "0"


def set_fused_attn(enabled: bool) -> None:
    """Set the default of ``Attention.fused`` for modules created afterwards (env ``DUALATTN_FUSED_ATTN``)."""
    global _FUSED_DEFAULT
    _FUSED_DEFAULT = bool(enabled)


def _unsupported(variant: str, feature: str) -> ValueError:
    why = WHY_NOT.get((variant, feature), "not implemented for this variant")
    return ValueError(f"Attention(variant={variant!r}) does not support {feature}: {why}")


class Attention(nn.Module):
    """Multi-head attention ``(B, N, dim) -> (B, N, dim)`` for any primal-dual variant.

    Args:
        dim: model width; ``head_dim = dim // num_heads``.
        num_heads: number of heads (independent SVRs).
        variant: one of ``VARIANTS``.
        qkv_bias, attn_drop, proj_drop: as in timm's ``Attention``.
        kv_dim: width of ``context`` for cross-attention (default ``dim``).
        proj_bias: bias of the output projection ``W_O``.
        **variant_options: see ``VARIANT_OPTIONS`` (e.g. ``factors``/``pool`` for SH, ``beta``/``eps``
            for BN, ``pattern``/``window``/``stride``/``topk`` for sparse, ``low_rank``/``num_samples``/
            ``positions``/``ksvd_reduction``/``init`` for primal: see docs/primal.md).

    ``self.fused`` (per instance) selects the fast path; False forces the reference path.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        variant: str = "softmax",
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        *,
        kv_dim: Optional[int] = None,
        proj_bias: bool = True,
        **variant_options,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"Attention: `variant` must be one of {VARIANTS}, got {variant!r}")
        if not (isinstance(dim, int) and isinstance(num_heads, int) and dim > 0 and num_heads > 0):
            raise ValueError(f"Attention: `dim` and `num_heads` must be positive ints, got {dim!r}, {num_heads!r}")
        if dim % num_heads:
            raise ValueError(f"Attention: `dim`={dim} must be divisible by `num_heads`={num_heads}")
        unknown = set(variant_options) - set(VARIANT_OPTIONS[variant])
        if unknown:
            raise TypeError(
                f"Attention(variant={variant!r}) got unknown option(s) {sorted(unknown)}; "
                f"it accepts {sorted(VARIANT_OPTIONS[variant])}"
            )
        if not 0.0 <= attn_drop < 1.0 or not 0.0 <= proj_drop < 1.0:
            raise ValueError(f"Attention: `attn_drop`/`proj_drop` must be in [0, 1), got {attn_drop}, {proj_drop}")
        if attn_drop > 0 and variant == "primal":
            raise _unsupported(variant, "attn_drop")
        self.dim, self.num_heads, self.variant = dim, num_heads, variant
        self.head_dim = dim // num_heads
        self.kv_dim = dim if kv_dim is None else kv_dim
        self.attn_drop = float(attn_drop)
        self.fused = _FUSED_DEFAULT
        self.options = {**VARIANT_OPTIONS[variant], **variant_options}
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(self.kv_dim, dim, bias=qkv_bias)
        self.v_proj = None if variant == "primal" else nn.Linear(self.kv_dim, dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        if variant in ("sh", "bn+sh"):
            self._init_sh()
        if variant == "primal":
            self._init_primal()

    # ------------------------------------------------------------------ setup
    def _init_sh(self) -> None:
        o = self.options
        o["factors"] = check_factors(
            default_factors(self.num_heads) if o["factors"] is None else o["factors"], self.num_heads, name="Attention"
        )
        if o["pool"] not in POOLS:
            raise ValueError(f"Attention: `pool` must be one of {POOLS}, got {o['pool']!r}")
        if o["pool"] == "conv":  # learned depthwise conv, kernel = stride = r, initialised to average pooling
            self.conv_k = nn.ParameterDict()
            self.conv_v = nn.ParameterDict()
            for h, r in enumerate(o["factors"]):
                if r > 1:
                    self.conv_k[str(h)] = nn.Parameter(torch.full((self.head_dim, r), 1.0 / r))
                    self.conv_v[str(h)] = nn.Parameter(torch.full((self.head_dim, r), 1.0 / r))

    def _init_primal(self) -> None:
        """``W~_e, W~_r`` (H, n, s) (``init_projection_``), ``Lambda`` (H, s) ~ U[0, 1), ``W_c``: 2s -> head_dim."""
        o = self.options
        s = o["low_rank"]
        if not (isinstance(s, int) and s >= 1):
            raise ValueError(f"Attention: `low_rank` must be a positive int, got {s!r}")
        n = o["num_samples"] or 10 * s
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"Attention: `num_samples` must be a positive int, got {n!r}")
        for key, allowed in (("positions", POSITIONS), ("ksvd_reduction", KSVD_REDUCTIONS), ("init", PRIMAL_INITS)):
            if o[key] not in allowed:
                raise ValueError(f"Attention: `{key}` must be one of {allowed}, got {o[key]!r}")
        o["num_samples"] = n
        H = self.num_heads
        self.w_e = nn.Parameter(torch.empty(H, n, s))
        self.w_r = nn.Parameter(torch.empty(H, n, s))
        init_projection_(self.w_e, o["init"])
        init_projection_(self.w_r, o["init"])
        self.lam = nn.Parameter(torch.rand(H, s))
        self.w_c = nn.Linear(2 * s, self.head_dim)
        self._ksvd_terms = None

    def extra_repr(self) -> str:
        opts = {k: v for k, v in self.options.items()}
        return f"dim={self.dim}, num_heads={self.num_heads}, variant={self.variant!r}, fused={self.fused}, options={opts}"

    # ---------------------------------------------------------------- forward
    def _check_inputs(self, x, context, key_padding_mask, attn_mask, is_causal):
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Attention: `x` must have shape (B, N, dim={self.dim}), got {got}")
        if not x.is_floating_point():
            raise TypeError(f"Attention: `x` must be floating point, got {x.dtype}")
        cap = CAPABILITIES[self.variant]
        if context is not None:
            if not cap["cross"]:
                raise _unsupported(self.variant, "cross")
            if not isinstance(context, Tensor) or context.dim() != 3 or context.shape[0] != x.shape[0] \
                    or context.shape[-1] != self.kv_dim:
                got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
                raise ValueError(f"Attention: `context` must have shape (B={x.shape[0]}, Nk, kv_dim={self.kv_dim}), got {got}")
            if context.dtype != x.dtype:
                raise TypeError(f"Attention: `context` dtype {context.dtype} differs from `x` dtype {x.dtype}")
        if is_causal and not cap["causal"]:
            raise _unsupported(self.variant, "causal")
        if attn_mask is not None:
            ok = cap["attn_mask"]
            if ok is False or (ok == "reference path only" and self.fused) or \
                    (ok == "factors all 1" and any(f > 1 for f in self.options["factors"])):
                raise _unsupported(self.variant, "attn_mask")
        if self.training and self.attn_drop > 0 and self.fused and not cap["attn_drop_fast"]:
            raise _unsupported(self.variant, "attn_drop")

    def _heads(self, t: Tensor) -> Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        context: Optional[Tensor] = None,
        key_padding_mask: Optional[Tensor] = None,
        attn_mask: Optional[Tensor] = None,
        is_causal: bool = False,
        need_weights: bool = False,
    ):
        """``x (B, N, dim)``, ``context (B, Nk, kv_dim)`` -> ``(B, N, dim)`` or ``(out, weights (B, H, N, Nk))``."""
        self._check_inputs(x, context, key_padding_mask, attn_mask, is_causal)
        src = x if context is None else context
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool \
                    or tuple(key_padding_mask.shape) != tuple(src.shape[:2]):
                got = (key_padding_mask.dtype, tuple(key_padding_mask.shape)) if isinstance(key_padding_mask, Tensor) else type(key_padding_mask).__name__
                raise ValueError(f"Attention: `key_padding_mask` must be bool (B, Nk) = {tuple(src.shape[:2])}, got {got}")
            src = src.masked_fill(~key_padding_mask[..., None], 0.0)  # padded tokens cannot leak NaN/inf
            if context is None:  # self-attention: padded queries too, so no NaN reaches any gradient
                x = src
        B, N, _ = x.shape
        q, k = self._heads(self.q_proj(x)), self._heads(self.k_proj(src))
        impl = "reference" if (need_weights or not self.fused) else "fast"
        common = dict(
            attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
            dropout_p=self.attn_drop if self.training else 0.0, need_weights=need_weights, impl=impl,
        )
        if self.variant == "primal":
            res = self._primal(x, q, k, common)
        else:
            v = self._heads(self.v_proj(src))
            res = DF.VARIANT_FUNCTIONS[self.variant](q, k, v, **common, **self._fn_options(q))
        out, w = res if need_weights else (res, None)
        out = self.proj_drop(self.out_proj(out.transpose(1, 2).reshape(B, N, self.dim)))
        return (out, w) if need_weights else out

    def _fn_options(self, q: Tensor) -> dict:
        o = dict(self.options)
        if self.variant in ("sh", "bn+sh") and o["pool"] == "conv":
            o["conv_weight_k"] = [self.conv_k[str(h)] if str(h) in self.conv_k else None for h in range(self.num_heads)]
            o["conv_weight_v"] = [self.conv_v[str(h)] if str(h) in self.conv_v else None for h in range(self.num_heads)]
        return o

    def _primal(self, x: Tensor, q: Tensor, k: Tensor, common: dict):
        # W_e(X) = X_sub^T W~_e from each sequence's real tokens (padding-invariant)
        w_e, w_r = primal_projections(x, self.w_e, self.w_r, self.num_heads, common["key_padding_mask"],
                                      positions=self.options["positions"])
        common = {**common, "dropout_p": 0.0}
        res = DF.primal_attention(q, k, w_e=w_e, w_r=w_r, **common)
        scores, w = res if common["need_weights"] else (res, None)
        s = self.options["low_rank"]
        self._ksvd_terms = (scores[..., :s], scores[..., s:], common["key_padding_mask"])
        out = self.w_c(scores)
        return (out, w) if common["need_weights"] else out

    def ksvd_loss(self) -> Tensor:
        """Primal-Attention's KSVD regulariser for the last forward pass (variant ``"primal"`` only)."""
        if self.variant != "primal":
            raise ValueError(f"Attention.ksvd_loss: only variant 'primal' has a KSVD loss, this is {self.variant!r}")
        if self._ksvd_terms is None:
            raise RuntimeError("Attention.ksvd_loss: call forward first")
        e, r, mask = self._ksvd_terms
        return DF.ksvd_loss(e, r, self.lam.to(e.dtype), self.w_e.to(e.dtype), self.w_r.to(e.dtype), mask=mask,
                            reduction=self.options["ksvd_reduction"])


def ksvd_regularizer(model: nn.Module) -> Tensor:
    """Mean KSVD loss over every primal ``Attention`` in ``model`` (0 if there is none)."""
    losses = [m.ksvd_loss() for m in model.modules() if isinstance(m, Attention) and m.variant == "primal"]
    if not losses:
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    return torch.stack(losses).mean()


