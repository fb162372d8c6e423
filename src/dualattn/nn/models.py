"""Classifiers built on :class:`dualattn.nn.Encoder` with pluggable attention.

* :class:`SequenceClassifier`: ``x`` continuous ``(B, N, C)`` (linear embedding)
  or token ids ``(B, N)`` (``nn.Embedding``); ``h = embed(x) + P[:N]`` with a
  learnable positional table ``P``; pre-norm encoder; masked mean pooling
  ``z = sum_i m_i h_i / sum_i m_i``; ``logits = W z + b``.
* :class:`ViT`: non-overlapping ``p x p`` patches (a strided convolution), a
  class token, learnable positions, pre-norm encoder, linear head on the class
  token. Plain PyTorch (no torchvision).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _encoder(dim: int, depth: int, num_heads: int, mlp_ratio: float, dropout: float, variant: str, variant_options):
    from dualattn.nn import Encoder

    return Encoder(
        dim,
        depth,
        num_heads,
        mlp_ratio=mlp_ratio,
        dropout=dropout,
        variant=variant,
        **(variant_options or {}),
    )


class SequenceClassifier(nn.Module):
    """Encoder classifier for multivariate time series or token sequences."""

    def __init__(
        self,
        num_classes: int,
        *,
        max_len: int,
        in_features: int | None = None,
        vocab_size: int | None = None,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        variant: str = "softmax",
        embed_dim: int | None = None,
        variant_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if (in_features is None) == (vocab_size is None):
            raise ValueError("give exactly one of in_features (continuous input) or vocab_size (token ids)")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.num_classes, self.max_len = num_classes, max_len
        self.in_features, self.vocab_size = in_features, vocab_size
        e = embed_dim or dim
        if vocab_size is not None:
            self.embed = nn.Embedding(vocab_size, e)
        else:
            self.embed = nn.Linear(in_features, e)
        self.embed_proj = nn.Linear(e, dim) if e != dim else nn.Identity()
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.encoder = _encoder(dim, depth, num_heads, mlp_ratio, dropout, variant, variant_options)
        self.head = nn.Linear(dim, num_classes)
        self.variant = variant

    def _check(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.vocab_size is not None:
            if x.ndim != 2 or x.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"x must be integer token ids (B, N), got {x.dtype} {tuple(x.shape)}")
        else:
            if x.ndim != 3 or x.shape[-1] != self.in_features or not x.is_floating_point():
                raise ValueError(f"x must be float (B, N, {self.in_features}), got {x.dtype} {tuple(x.shape)}")
        B, N = x.shape[:2]
        if N > self.max_len:
            raise ValueError(f"sequence length {N} exceeds max_len={self.max_len}")
        if mask is None:
            return torch.ones(B, N, dtype=torch.bool, device=x.device)
        if mask.shape != (B, N) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool (B, N)=({B}, {N}), got {mask.dtype} {tuple(mask.shape)}")
        if not mask.any(-1).all():
            raise ValueError("mask: every sample needs at least one real (True) step")
        return mask

    def forward(self, x: Tensor, mask: Tensor | None = None, return_attention: bool = False):
        mask = self._check(x, mask)
        N = x.shape[1]
        h = self.embed_proj(self.embed(x)) + self.pos[:, :N]
        h = self.drop(h)
        out = self.encoder(h, key_padding_mask=mask, need_weights=return_attention)
        h, weights = out if return_attention else (out, None)
        m = mask.unsqueeze(-1)
        # torch.where, not h * m: a NaN/inf at a padded step must not reach the pooled vector
        z = torch.where(m, h, 0.0).sum(1) / m.sum(1).to(h.dtype)
        logits = self.head(z)
        return (logits, weights) if return_attention else logits


class ViT(nn.Module):
    """Small Vision Transformer; images ``(B, C, H, W)`` or pixel sequences ``(B, H*W, C)``."""

    def __init__(
        self,
        num_classes: int,
        *,
        image_size: int,
        patch_size: int = 2,
        channels: int = 1,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.1,
        variant: str = "softmax",
        variant_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be divisible by patch_size={patch_size}")
        self.image_size, self.patch_size, self.channels = image_size, patch_size, channels
        self.num_patches = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, self.num_patches + 1, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.encoder = _encoder(dim, depth, num_heads, mlp_ratio, dropout, variant, variant_options)
        self.head = nn.Linear(dim, num_classes)
        self.variant = variant

    def _as_image(self, x: Tensor) -> Tensor:
        S, C = self.image_size, self.channels
        if not x.is_floating_point():
            raise TypeError(f"x must be floating point, got {x.dtype}")
        if x.ndim == 3 and x.shape[1:] == (S * S, C):
            return x.transpose(1, 2).reshape(x.shape[0], C, S, S)
        if x.ndim == 4 and x.shape[1:] == (C, S, S):
            return x
        raise ValueError(f"x must be (B, {C}, {S}, {S}) or (B, {S * S}, {C}), got {tuple(x.shape)}")

    def forward(self, x: Tensor, mask: Tensor | None = None, return_attention: bool = False):
        """``mask`` is accepted for interface parity; images have no padding."""
        img = self._as_image(x)
        h = self.patch(img).flatten(2).transpose(1, 2)  # (B, P, dim)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.pos
        h = self.drop(h)
        out = self.encoder(h, need_weights=return_attention)
        h, weights = out if return_attention else (out, None)
        logits = self.head(h[:, 0])
        return (logits, weights) if return_attention else logits


def build_model(cfg, *, num_classes: int, max_len: int, in_features: int | None, vocab_size: int | None) -> nn.Module:
    """Build a model from a :class:`dualattn.train.config.ModelConfig`."""
    common = dict(
        dim=cfg.dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.effective_mlp_ratio,
        dropout=cfg.dropout,
        variant=cfg.variant,
        variant_options=dict(cfg.variant_options),
    )
    if cfg.kind == "vit":
        if vocab_size is not None:
            raise ValueError("model.kind='vit' needs continuous pixel input, got token ids")
        channels = cfg.channels if in_features is None else in_features
        size = cfg.image_size or int(round(max_len**0.5))
        if size * size != max_len and cfg.image_size is None:
            raise ValueError(f"cannot infer model.image_size from sequence length {max_len}; set it")
        return ViT(num_classes, image_size=size, patch_size=cfg.patch_size, channels=channels, **common)
    return SequenceClassifier(
        num_classes,
        max_len=cfg.max_len or max_len,
        in_features=in_features,
        vocab_size=vocab_size,
        embed_dim=cfg.embed_dim,
        **common,
    )
