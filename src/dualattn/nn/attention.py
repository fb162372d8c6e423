"""``dualattn.nn.Attention``: multi-head attention with a selectable primal-dual variant.

Multi-head = H independent SVRs (one per head), concatenated and mixed by ``W_O``:
``Attention(x) = concat_h f_h(x W_Q^h, c W_K^h, c W_V^h) W_O`` with ``c = context`` (or ``x``)
and ``f_h`` one of the functions in :mod:`dualattn.functional`.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional as DF
from ..functional.primal import init_projection_, primal_projections
from ..functional import registry as R

#: Registered variant names (a live, tuple-like view of :mod:`dualattn.functional.registry`).
VARIANTS = R.VARIANT_NAMES
#: Options each variant accepts (passed as ``**variant_options``) and their defaults (live view).
VARIANT_OPTIONS = R.VARIANT_OPTIONS
#: What each variant supports (live view): ``attn_mask``/``causal``/``cross``/``attn_drop`` are True,
#: False, ``"reference path only"`` or a condition such as ``"factors all 1"``; ``attn_drop_fast`` is a
#: bool. ``get_variant(name).not_supported(...)`` gives the reasons for one concrete call.
CAPABILITIES = R.CAPABILITIES

_FUSED_DEFAULT = os.environ.get("DUALATTN_FUSED_ATTN", "1") != "0"


def set_fused_attn(enabled: bool) -> None:
    """Set the default of ``Attention.fused`` for modules created afterwards (env ``DUALATTN_FUSED_ATTN``)."""
    global _FUSED_DEFAULT
    _FUSED_DEFAULT = bool(enabled)


class Attention(nn.Module):
    """Multi-head attention ``(B, N, dim) -> (B, N, dim)`` for any primal-dual variant.

    Args:
        dim: model width; ``head_dim = dim // num_heads``.
        num_heads: number of heads (independent SVRs).
        variant: a registered name (``VARIANTS``: softmax, linear, sparse, bn, sh, bn+sh, linear-bn, primal
            or any variant added with :func:`dualattn.functional.registry.register`).
        qkv_bias, attn_drop, proj_drop: as in timm's ``Attention``.
        kv_dim: width of ``context`` for cross-attention (default ``dim``).
        proj_bias: bias of the output projection ``W_O``.
        **variant_options: see ``VARIANT_OPTIONS`` (e.g. ``factors``/``pool`` for SH, ``beta``/``eps``
            for BN, ``pattern``/``window``/``stride``/``topk`` for sparse, ``low_rank``/``num_samples``/
            ``positions``/``ksvd_reduction``/``init`` for primal: see docs/primal.md).
        fused: fast path (default: ``set_fused_attn`` / env ``DUALATTN_FUSED_ATTN``); False forces the
            reference path. ``self.fused`` can be changed per instance later.

    Options are validated here, through the registry's validators (e.g. ``eps=0`` or ``window=-1``
    fail at construction, not at the first forward), and so is ``attn_drop`` against what the
    chosen path supports (``linear``/``linear-bn`` cannot drop weights on their O(N) path).
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
        fused: Optional[bool] = None,
        **variant_options,
    ):
        super().__init__()
        try:
            var = R.get_variant(variant)
        except ValueError:
            raise ValueError(f"Attention: `variant` must be one of {R.variant_names()}, got {variant!r}") from None
        if not (isinstance(dim, int) and isinstance(num_heads, int) and dim > 0 and num_heads > 0):
            raise ValueError(f"Attention: `dim` and `num_heads` must be positive ints, got {dim!r}, {num_heads!r}")
        if dim % num_heads:
            raise ValueError(f"Attention: `dim`={dim} must be divisible by `num_heads`={num_heads}")
        label = f"Attention(variant={variant!r})"
        self.options = var.validate_options(variant_options, num_heads=num_heads, name=label)
        if not (isinstance(attn_drop, (int, float)) and isinstance(proj_drop, (int, float))
                and 0.0 <= attn_drop < 1.0 and 0.0 <= proj_drop < 1.0):
            raise ValueError(f"Attention: `attn_drop`/`proj_drop` must be in [0, 1), got {attn_drop!r}, {proj_drop!r}")
        self.fused = _FUSED_DEFAULT if fused is None else bool(fused)
        reasons = var.not_supported(dropout_p=attn_drop, impl="fast" if self.fused else "reference",
                                    options=self.options)
        if reasons:
            raise ValueError(f"{label} does not support {'; '.join(reasons)}")
        self.dim, self.num_heads, self.variant = dim, num_heads, variant
        self.head_dim = dim // num_heads
        self.kv_dim = dim if kv_dim is None else kv_dim
        self.attn_drop = float(attn_drop)
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(self.kv_dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(self.kv_dim, dim, bias=qkv_bias) if var.needs_values else None
        self.out_proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        if "pooled_heads" in var.flags:
            self._init_sh()
        if "primal" in var.flags:
            self._init_primal()

    # ------------------------------------------------------------------ setup
    def _init_sh(self) -> None:
        """``pool="conv"``: learned depthwise conv per pooled head, kernel = stride = r, initialised to averaging."""
        o = self.options  # factors/pool already validated (and factors defaulted) by the registry
        if o["pool"] == "conv":
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
    def _check_inputs(self, x, context, key_padding_mask, attn_mask, is_causal, need_weights):
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Attention: `x` must have shape (B, N, dim={self.dim}), got {got}")
        if not x.is_floating_point():
            raise TypeError(f"Attention: `x` must be floating point, got {x.dtype}")
        if context is not None:
            if not isinstance(context, Tensor) or context.dim() != 3 or context.shape[0] != x.shape[0] \
                    or context.shape[-1] != self.kv_dim:
                got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
                raise ValueError(f"Attention: `context` must have shape (B={x.shape[0]}, Nk, kv_dim={self.kv_dim}), got {got}")
            if context.dtype != x.dtype:
                raise TypeError(f"Attention: `context` dtype {context.dtype} differs from `x` dtype {x.dtype}")
        reasons = R.get_variant(self.variant).not_supported(
            is_causal=is_causal, attn_mask=attn_mask, key_padding_mask=key_padding_mask, cross=context is not None,
            dropout_p=self.attn_drop if self.training else 0.0, need_weights=need_weights,
            impl="reference" if (need_weights or not self.fused) else "fast", options=self.options,
        )
        if reasons:
            raise ValueError(f"Attention(variant={self.variant!r}) does not support {'; '.join(reasons)}")

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
        self._check_inputs(x, context, key_padding_mask, attn_mask, is_causal, need_weights)
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
        var = R.get_variant(self.variant)
        if "primal" in var.flags:
            res = self._primal(x, q, k, common)
        else:
            v = self._heads(self.v_proj(src))
            res = var.function(q, k, v, **common, **self._fn_options(q))
        out, w = res if need_weights else (res, None)
        out = self.proj_drop(self.out_proj(out.transpose(1, 2).reshape(B, N, self.dim)))
        return (out, w) if need_weights else out

    def _fn_options(self, q: Tensor) -> dict:
        o = R.get_variant(self.variant).function_options(self.options)
        if o.get("pool") == "conv" and hasattr(self, "conv_k"):
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


