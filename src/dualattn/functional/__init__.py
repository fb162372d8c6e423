"""Attention functions on ``(B, H, N, D)`` tensors, each with a reference and a fast path.

Every function has the signature ``f(q, k, v, *, attn_mask=None, key_padding_mask=None,
is_causal=False, dropout_p=0.0, scale=None, need_weights=False, impl="auto", **options)``
and returns ``out (B, H, Nq, Dv)`` or ``(out, weights (B, H, Nq, Nk))``.
See ``docs/svr-view.md`` for the equations.

Every variant registers itself in :mod:`dualattn.functional.registry` (function, option
defaults and validators, supported features, ``not_supported(...)`` reasons);
``VARIANT_FUNCTIONS`` is a live read-only view of it.
"""

from . import registry
from .registry import VARIANT_FUNCTIONS, Variant, get_variant, register, unregister, variant_names
from .softmax import softmax_attention  # noqa: I001  (import order = registration order of built-ins)
from .bn import bn_attention, key_statistics
from .linear import elu_feature_map, linear_attention, linear_bn_attention
from .primal import ksvd_loss, primal_attention
from .sh import bn_sh_attention, default_factors, sh_attention
from .sparse import sparse_attention, sparse_pattern

__all__ = [
    "softmax_attention",
    "linear_attention",
    "sparse_attention",
    "bn_attention",
    "sh_attention",
    "bn_sh_attention",
    "linear_bn_attention",
    "primal_attention",
    "ksvd_loss",
    "key_statistics",
    "elu_feature_map",
    "sparse_pattern",
    "default_factors",
    "VARIANT_FUNCTIONS",
    "registry",
    "Variant",
    "get_variant",
    "register",
    "unregister",
    "variant_names",
]
