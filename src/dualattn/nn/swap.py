"""Swap the attention of an existing model for any dualattn variant, reusing its weights.

Handles our :class:`~dualattn.nn.Attention` (e.g. inside :class:`~dualattn.nn.Encoder`) and
``transformers`` self-attention modules of BERT style (``query/key/value`` linears, output
projection outside, e.g. ``BertSelfAttention``) and ViT/Dinov2 style (``q_proj/k_proj/v_proj/o_proj``
in one module). The pretrained q/k/v/o linears are reused as they are (shared, not copied),
so ``variant="softmax"`` reproduces the original model.

Attention dropout: each replaced module keeps the original's attention-dropout rate unless
``swap_attention(..., attn_drop=p)`` overrides it. A variant that cannot drop attention weights
on its fast path (``linear``, ``linear-bn``: the O(N) path never forms them; ``primal``: no weights
at all) fails at swap time, before any module is replaced, naming ``attn_drop=0.0`` as the fix.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..functional import registry as R
from . import attention as _attention
from .attention import Attention


def _hf_linears(m: nn.Module) -> Optional[Tuple[nn.Linear, nn.Linear, nn.Linear, Optional[nn.Linear]]]:
    if not hasattr(m, "num_attention_heads"):
        return None
    if all(isinstance(getattr(m, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")):
        o = getattr(m, "o_proj", None)
        return m.q_proj, m.k_proj, m.v_proj, o if isinstance(o, nn.Linear) else None
    if all(isinstance(getattr(m, n, None), nn.Linear) for n in ("query", "key", "value")):
        return m.query, m.key, m.value, None
    return None


class HFAttention(nn.Module):
    """Drop-in replacement for a ``transformers`` self-attention module running a dualattn variant.

    ``forward(hidden_states, attention_mask=None, **kwargs) -> (out, weights or None)`` like the
    module it replaces. A 4-D HF mask (bool True = attend, or additive float) whose rows are all
    equal becomes a ``key_padding_mask``; any other mask is passed as ``attn_mask``.
    """

    def __init__(self, original: nn.Module, variant: str, *, attn_drop: Optional[float] = None, **variant_options):
        nn.Module.__init__(self)  # not super(): the dynamic subclass also derives from the HF class
        lin = _hf_linears(original)
        if lin is None:
            raise TypeError(f"HFAttention: {type(original).__name__} has no q/k/v linears and num_attention_heads")
        q, k, v, o = lin
        H = int(original.num_attention_heads)
        if q.out_features != q.in_features:
            raise ValueError(
                f"HFAttention: {type(original).__name__} maps width {q.in_features} to {q.out_features} "
                "(heads * head_dim); dualattn needs them equal"
            )
        drop = _hf_attn_drop(original) if attn_drop is None else attn_drop
        self.attn = Attention(q.in_features, H, variant, qkv_bias=q.bias is not None, attn_drop=float(drop),
                              **variant_options)
        self.attn.q_proj, self.attn.k_proj = q, k
        if self.attn.v_proj is not None:
            self.attn.v_proj = v
        self.attn.out_proj = o if o is not None else nn.Identity()
        self.attn.to(device=q.weight.device, dtype=q.weight.dtype)
        self.original_class = type(original).__name__
        for attr in ("config", "layer_idx", "is_causal", "num_attention_heads"):
            if hasattr(original, attr):
                setattr(self, attr, getattr(original, attr))
        self.train(original.training)

    @staticmethod
    def _masks(attention_mask: Optional[Tensor], B: int, N: int):
        if attention_mask is None:
            return None, None
        m = attention_mask
        if m.dtype != torch.bool:
            m = m > torch.finfo(m.dtype).min / 2
        if m.dim() == 2:  # (B, Nk) padding mask
            m = m[:, None, None, :]
        if m.dim() != 4:
            raise ValueError(f"HFAttention: unsupported attention_mask shape {tuple(attention_mask.shape)}")
        if m.shape[1] == 1 and (m.shape[2] == 1 or bool((m == m[:, :, :1]).all())):
            kpm = m[:, 0, 0, :].expand(B, m.shape[-1])
            return None, (None if bool(kpm.all()) else kpm.contiguous())
        return m, None

    def forward(self, hidden_states: Tensor, attention_mask: Optional[Tensor] = None, *args, **kwargs):
        if kwargs.get("past_key_values") is not None or kwargs.get("past_key_value") is not None:
            raise ValueError("HFAttention: key/value caching (past_key_values) is not supported")
        if kwargs.get("encoder_hidden_states") is not None:
            raise ValueError("HFAttention: only self-attention modules are swapped; cross-attention is unsupported")
        B, N, _ = hidden_states.shape
        attn_mask, kpm = self._masks(attention_mask, B, N)
        need = bool(kwargs.get("output_attentions", False)) or _hf_collecting_attentions()
        res = self.attn(hidden_states, key_padding_mask=kpm, attn_mask=attn_mask, need_weights=need)
        return res if need else (res, None)


def _hf_attn_drop(m: nn.Module) -> float:
    """Attention-dropout rate of a ``transformers`` attention module (``attention_dropout`` or ``dropout``)."""
    drop = getattr(m, "attention_dropout", None)
    if drop is None:
        d = getattr(m, "dropout", None)
        drop = d.p if isinstance(d, nn.Dropout) else 0.0
    return float(drop)


def _hf_collecting_attentions() -> bool:
    """True while a ``transformers`` model is collecting attention maps (``output_attentions=True``)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except Exception:  # older/newer transformers: fall back to the output_attentions kwarg only
        return False
    try:
        col = _active_collector.get()
    except LookupError:
        return False
    return isinstance(col, dict) and "attentions" in col


_WRAPPER_CLASSES: dict = {}


def _wrapper_class(original: nn.Module) -> type:
    """``HFAttention`` subclass that is also an instance of the replaced HF class, so that
    ``transformers``' output recorders (which match by class) still collect attention maps."""
    base = type(original)
    cls = _WRAPPER_CLASSES.get(base)
    if cls is None:
        name = f"DualAttn{base.__name__}"
        cls = type(name, (HFAttention, base), {"__module__": __name__})
        globals()[name] = cls  # picklable by qualified name within this process
        _WRAPPER_CLASSES[base] = cls
    return cls


def _rebuild(old: Attention, variant: str, *, attn_drop: Optional[float] = None, **variant_options) -> Attention:
    new = Attention(old.dim, old.num_heads, variant, qkv_bias=old.q_proj.bias is not None,
                    attn_drop=old.attn_drop if attn_drop is None else attn_drop,
                    proj_drop=old.proj_drop.p, kv_dim=old.kv_dim, proj_bias=getattr(old.out_proj, "bias", None) is not None,
                    fused=old.fused, **variant_options)
    new.q_proj, new.k_proj, new.out_proj = old.q_proj, old.k_proj, old.out_proj
    if new.v_proj is not None and old.v_proj is not None:
        new.v_proj = old.v_proj
    ref = old.q_proj.weight
    new.to(device=ref.device, dtype=ref.dtype)
    new.train(old.training)
    return new


def swap_attention(model: nn.Module, variant: str, *, attn_drop: Optional[float] = None, **variant_options) -> nn.Module:
    """Replace, in place, every attention module of ``model`` by ``variant`` (weights reused); returns ``model``.

    ``attn_drop``: attention-dropout rate of the new modules (default: each original's own rate).
    ``variant_options``: the variant's options (``dualattn.nn.VARIANT_OPTIONS``), validated before
    anything is replaced. Raises ``ValueError`` if nothing was replaced, if the variant is unknown,
    or if it cannot apply the (kept) attention dropout on its fast path (pass ``attn_drop=0.0``);
    on any error the model is left unchanged.
    """
    var = R.get_variant(variant)
    if attn_drop is not None and not (isinstance(attn_drop, (int, float)) and 0.0 <= attn_drop < 1.0):
        raise ValueError(f"swap_attention: `attn_drop` must be a float in [0, 1) or None (keep each module's), got {attn_drop!r}")
    targets = []
    for name, m in model.named_modules():
        if isinstance(m, Attention):  # ours, standalone or inside an HFAttention wrapper (name "....attn")
            targets.append((name, m, "ours"))
        elif isinstance(m, HFAttention):
            continue
        elif _hf_linears(m) is not None and "Cross" not in type(m).__name__ and not getattr(m, "is_cross_attention", False):
            targets.append((name, m, "hf"))
    if not targets:
        raise ValueError(f"swap_attention: found no attention module in {type(model).__name__}")
    if any(name == "" for name, _, _ in targets):
        raise ValueError("swap_attention: pass the model that contains the attention, not the attention itself")
    for name, m, kind in targets:  # attention dropout the variant cannot apply: say so now, not in training
        drop = attn_drop if attn_drop is not None else (m.attn_drop if kind == "ours" else _hf_attn_drop(m))
        fused = m.fused if kind == "ours" else _attention._FUSED_DEFAULT
        reasons = var.not_supported(dropout_p=drop, impl="fast" if fused else "reference")
        if reasons:
            raise ValueError(
                f"swap_attention: {name} ({type(m).__name__}) has attention dropout p={drop}, which variant "
                f"{variant!r} cannot apply ({'; '.join(reasons)}). Pass attn_drop=0.0 to swap_attention to swap "
                "without attention dropout" + ("" if "primal" in var.flags else
                                               ", or call dualattn.nn.set_fused_attn(False) first for the O(N^2) reference path")
            )
    new_modules = []  # build every replacement before touching the model
    for name, m, kind in targets:
        new = _rebuild(m, variant, attn_drop=attn_drop, **variant_options) if kind == "ours" else \
            _wrapper_class(m)(m, variant, attn_drop=attn_drop, **variant_options)
        new_modules.append((name, new))
    for name, new in new_modules:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model
