"""Pre-norm Transformer encoder built on :class:`dualattn.nn.Attention`.

Block: ``x = x + Attn(LN(x))``; ``x = x + MLP(LN(x))``. Encoder: blocks, then a final LayerNorm.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

from torch import Tensor, nn

from .attention import VARIANT_OPTIONS, Attention


class EncoderBlock(nn.Module):
    """Pre-norm block: attention (any variant) and a GELU MLP with hidden width ``mlp_ratio * dim``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        variant: str = "softmax",
        *,
        attn_drop: float = 0.0,
        qkv_bias: bool = True,
        **variant_options,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, variant, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=dropout,
                              **variant_options)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None,
                is_causal: bool = False, need_weights: bool = False):
        a = self.attn(self.norm1(x), key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal,
                      need_weights=need_weights)
        a, w = a if need_weights else (a, None)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return (x, w) if need_weights else x


class Encoder(nn.Module):
    """Stack of ``depth`` pre-norm blocks plus a final LayerNorm.

    ``variant`` may be one name for every layer or a sequence of ``depth`` names.
    ``forward(..., need_weights=True)`` returns ``(x, [weights (B, H, N, N) per layer])``.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        variant: Union[str, Sequence[str]] = "softmax",
        *,
        attn_drop: float = 0.0,
        qkv_bias: bool = True,
        **variant_options,
    ):
        super().__init__()
        if not (isinstance(depth, int) and depth >= 1):
            raise ValueError(f"Encoder: `depth` must be a positive int, got {depth!r}")
        variants = [variant] * depth if isinstance(variant, str) else list(variant)
        if len(variants) != depth:
            raise ValueError(f"Encoder: `variant` must be a name or a list of {depth} names, got {len(variants)}")
        self.dim, self.depth, self.num_heads = dim, depth, num_heads
        if len(set(variants)) > 1:  # mixed layers: each gets the options its variant accepts
            unknown = [o for o in variant_options if not any(o in VARIANT_OPTIONS.get(v, {}) for v in variants)]
            if unknown:
                raise TypeError(f"Encoder: option(s) {unknown} are not accepted by any of the variants {sorted(set(variants))}")

        def opts(v):
            if len(set(variants)) == 1:
                return variant_options
            return {k: val for k, val in variant_options.items() if k in VARIANT_OPTIONS.get(v, {})}

        self.blocks = nn.ModuleList(
            EncoderBlock(dim, num_heads, mlp_ratio, dropout, v, attn_drop=attn_drop, qkv_bias=qkv_bias, **opts(v))
            for v in variants
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None, attn_mask: Optional[Tensor] = None,
                is_causal: bool = False, need_weights: bool = False):
        weights: List[Tensor] = []
        for blk in self.blocks:
            x = blk(x, key_padding_mask=key_padding_mask, attn_mask=attn_mask, is_causal=is_causal,
                    need_weights=need_weights)
            if need_weights:
                x, w = x
                weights.append(w)
        x = self.norm(x)
        return (x, weights) if need_weights else x
