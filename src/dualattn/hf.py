"""dualattn variants inside ``transformers`` models, through ``AttentionInterface``.

Importing this module registers every score-based variant under a transformers attention name::

    import dualattn.hf                                     # registers dualattn_softmax, dualattn_bn, ...
    model = AutoModel.from_pretrained(path, attn_implementation="dualattn_bn")
    model.set_attn_implementation("dualattn_sh")            # switch in place, weights untouched
    dualattn.hf.set_options(model, "sh", factors=[1, 2, 4, 8] * 3)   # per-model variant options
    dualattn.hf.use(model, "bn+sh", beta=0.5)               # set_options + set_attn_implementation

Each name gets the attention function below and, in ``AttentionMaskInterface``, transformers'
``sdpa_mask`` (a bool ``(B, 1, Nq, Nk)`` mask, True = attend, or None when nothing is masked).
Without a mask entry a custom name silently receives ``attention_mask=None`` (padding ignored).

The attention function turns that mask back into what the dualattn functions need:

* ``key_padding_mask (B, Nk)``: a key is real if some query attends to it (every real key is
  seen at least by its own query), so BN statistics and SH pooling skip padded keys;
* ``is_causal``: from ``module.is_causal`` (or the ``is_causal`` kwarg), used only when the mask is
  exactly ``causal & key_padding_mask`` (bottom-right aligned, as transformers builds it), so the
  causal fast paths (running BN statistics, SH's causal staircase) are used;
* anything else (sliding windows, packed sequences, custom 4-D masks) is passed as ``attn_mask``
  for bidirectional models; for causal models only ``dualattn_softmax`` accepts it (the statistics
  of the other variants would see future keys), the others raise ``ValueError`` saying so.

Padding invariance: position-dependent variants (``sparse``, ``sh``, ``bn+sh``) run on the real
tokens packed to the front of each row (stable order) whenever the padding is not already on the
right, so left padding gives the same result as no padding. Cached decoding (fewer queries than
keys) is bottom-right aligned like transformers': causal variants run on zero queries padded to
the key length (one query: plain attention over the visible keys when the variant's running
statistics at the last position equal its global ones: linear, bn, linear-bn).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

#: Score-based variants that can run inside any transformers attention module (primal needs X
#: and its own parameters: use :func:`dualattn.nn.swap_attention` for it).
VARIANTS = ("softmax", "linear", "sparse", "bn", "sh", "bn+sh", "linear-bn")
#: Variants whose result depends on token positions (windows, pooling blocks).
POSITIONAL = ("sparse", "sh", "bn+sh")
#: Variants whose causal output at the last query equals their non-causal output.
GLOBAL_AT_LAST = ("linear", "bn")
#: Variants without a softmax temperature (``scale`` must be None).
NO_SCALE = ("linear", "linear-bn")
#: Options that need learned parameters a transformers module does not have.
_PARAM_OPTIONS = {"conv_weight_k", "conv_weight_v"}
#: Options of the integration itself, valid for every variant: ``compute_dtype`` (None, "float32",
#: "float64") runs the attention in that dtype (BN on a few keys is ill-conditioned in float32).
HF_OPTIONS = {"compute_dtype": None}
_DTYPES = {None: None, "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}
PREFIX = "dualattn_"
CONFIG_ATTR = "dualattn_options"
MODULE_ATTR = "dualattn_options"


# --------------------------------------------------------------------------- variant lookup
def variant_function(variant: str) -> Tuple[Callable, Dict[str, Any]]:
    """The functional implementation of ``variant`` and its options with their defaults (plus ``impl``).

    The single place that reads the variant registry (:mod:`dualattn.functional.registry`).
    """
    from dualattn.functional.registry import get_variant

    if variant not in VARIANTS:
        raise ValueError(f"dualattn.hf: unknown variant {variant!r}; choose one of {list(VARIANTS)} "
                         "(primal needs its own parameters: use dualattn.nn.swap_attention)")
    var = get_variant(variant)
    opts = {name: opt.default for name, opt in var.options.items()
            if name not in var.module_options and name not in _PARAM_OPTIONS}
    return var.function, opts | {"impl": "auto"}


def attn_name(variant: str) -> str:
    """transformers attention name of ``variant``: ``"bn+sh"`` -> ``"dualattn_bn_sh"``."""
    variant_function(variant)  # validates
    return PREFIX + variant.replace("+", "_").replace("-", "_")


def variant_of(name: str) -> str:
    """Inverse of :func:`attn_name`."""
    for v in VARIANTS:
        if attn_name(v) == name:
            return v
    raise ValueError(f"dualattn.hf: {name!r} is not a dualattn attention name; known: {registered_names()}")


def registered_names() -> list:
    return [attn_name(v) for v in VARIANTS]


# --------------------------------------------------------------------------- options
def _check_option_names(variant: str, options: Dict[str, Any]) -> Dict[str, Any]:
    _, defaults = variant_function(variant)
    defaults = {**defaults, **HF_OPTIONS}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        extra = " (SH's learned 'conv' pooling needs parameters: use swap_attention)" \
            if set(unknown) & _PARAM_OPTIONS else ""
        raise TypeError(f"dualattn.hf: variant {variant!r} has no option(s) {unknown}; "
                        f"it accepts {sorted(defaults)}{extra}")
    if options.get("compute_dtype") not in _DTYPES:
        raise ValueError(f"dualattn.hf: compute_dtype must be one of {list(_DTYPES)}, got {options['compute_dtype']!r}")
    if options.get("pool") == "conv":
        raise ValueError("dualattn.hf: pool='conv' needs learned pooling kernels that transformers modules do not "
                         "have; use pool='avg' or 'stride' (or dualattn.nn.swap_attention)")
    return options


def _dry_run(variant: str, options: Dict[str, Any], num_heads: int, head_dim: int) -> None:
    """Validate option values by one call on tiny random tensors (the functional API's own checks)."""
    fn, _ = variant_function(variant)
    q = torch.randn(1, num_heads, 4, head_dim)
    opts = {k: v for k, v in _resolved(variant, options, num_heads).items() if k not in HF_OPTIONS}
    try:
        fn(q, q, q, **opts)
    except (ValueError, TypeError) as e:
        raise type(e)(f"dualattn.hf.set_options({variant!r}, {options}): {e}") from e


def _resolved(variant: str, options: Dict[str, Any], num_heads: int) -> Dict[str, Any]:
    """Options passed to the function: SH's default factors are ``default_factors(H)``."""
    out = dict(options)
    if variant in ("sh", "bn+sh") and out.get("factors") is None:
        from dualattn.functional import default_factors

        out["factors"] = default_factors(num_heads)
    return out


def _configs(model: torch.nn.Module) -> list:
    seen, out = set(), []
    for cfg in [getattr(model, "config", None)] + [getattr(m, "config", None) for m in model.modules()]:
        if cfg is not None and id(cfg) not in seen and hasattr(cfg, "num_attention_heads"):
            seen.add(id(cfg))
            out.append(cfg)
    return out


def set_options(model: torch.nn.Module, variant: str, **options) -> torch.nn.Module:
    """Store ``variant``'s options (e.g. ``factors``, ``beta``, ``impl``) on ``model``'s config(s).

    Options are validated now (names and values); they are read at every forward by the
    attention function (``module.dualattn_options`` on a single attention module overrides them)
    and saved with ``save_pretrained`` as ``config.dualattn_options``. Returns ``model``.
    """
    _check_option_names(variant, options)
    cfgs = _configs(model)
    if not cfgs:
        raise TypeError(f"dualattn.hf.set_options: {type(model).__name__} has no transformers config "
                        "with num_attention_heads")
    for cfg in cfgs:
        H = int(cfg.num_attention_heads)
        D = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // H)
        _dry_run(variant, options, H, D)
        table = dict(getattr(cfg, CONFIG_ATTR, None) or {})
        table[variant] = dict(options)
        setattr(cfg, CONFIG_ATTR, table)
    return model


def get_options(module_or_config: Any, variant: str) -> Dict[str, Any]:
    """Options in effect for ``variant`` on an attention module (or a config): defaults updated
    by ``config.dualattn_options[variant]`` and then ``module.dualattn_options[variant]``."""
    _, opts = variant_function(variant)
    opts = {**opts, **HF_OPTIONS}
    cfg = getattr(module_or_config, "config", module_or_config)
    for src in (getattr(cfg, CONFIG_ATTR, None), getattr(module_or_config, MODULE_ATTR, None)):
        if isinstance(src, dict) and src.get(variant):
            opts.update(src[variant])
    return opts


def use(model, variant: str, **options):
    """``set_options(model, variant, **options)`` then ``model.set_attn_implementation(attn_name(variant))``."""
    register()
    set_options(model, variant, **options)
    model.set_attn_implementation(attn_name(variant))
    return model


# --------------------------------------------------------------------------- masks
_MASK_CACHE: Dict[str, Any] = {}


def _bottom_right_causal(Nq: int, Nk: int, device) -> Tensor:
    """``(Nq, Nk)`` bool: query ``i`` (absolute position ``Nk - Nq + i``) sees keys ``j <= Nk - Nq + i``."""
    return torch.ones(Nq, Nk, dtype=torch.bool, device=device).tril(diagonal=Nk - Nq)


def decompose_mask(mask: Tensor, causal: bool, B: int, Nq: int, Nk: int):
    """Split a 4-D transformers mask into ``(key_padding_mask or None, structured, bool_mask)``.

    ``structured`` is True when the mask is exactly ``key_padding_mask`` (bidirectional) or
    ``bottom-right causal & key_padding_mask`` (causal); ``bool_mask`` is the mask as bool
    ``(B, 1|H, Nq, Nk)``. The last result is cached per mask tensor (all layers share it).
    """
    hit = _MASK_CACHE.get("key")
    if hit is not None and hit[0]() is mask and hit[1:] == (causal, B, Nq, Nk):
        return _MASK_CACHE["value"]
    if mask.dim() != 4 or mask.shape[-2:] != (Nq, Nk):
        raise ValueError(f"dualattn.hf: attention_mask must be 4-D (B, 1, Nq, Nk) = (B, 1, {Nq}, {Nk}), "
                         f"got {tuple(mask.shape)}")
    m = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
    m = m.expand(B, -1, Nq, Nk)
    kpm = m.any(dim=(1, 2))
    ref = kpm[:, None, None, :]
    if causal:
        ref = ref & _bottom_right_causal(Nq, Nk, m.device)
    structured = bool((m == ref).all())
    value = (None if bool(kpm.all()) else kpm, structured, m)
    _MASK_CACHE["key"] = (weakref.ref(mask), causal, B, Nq, Nk)
    _MASK_CACHE["value"] = value
    return value


def _is_right_padded(kpm: Tensor) -> bool:
    """True if every row is real tokens followed by padding only."""
    return not bool((kpm[:, 1:] & ~kpm[:, :-1]).any())


def _pack(x: Tensor, order: Tensor) -> Tensor:
    return torch.gather(x, 2, order[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))


def _unpack(x: Tensor, order: Tensor) -> Tensor:
    return torch.empty_like(x).scatter_(2, order[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]), x)


# --------------------------------------------------------------------------- attention
def _run(fn, variant, q, k, v, *, kpm, causal, attn_mask, opts, scale, dropout):
    """Call the functional variant, packing real tokens to the front for positional variants."""
    Nq, Nk = q.shape[2], k.shape[2]
    pack = (variant in POSITIONAL and kpm is not None and attn_mask is None and Nq == Nk
            and not _is_right_padded(kpm))
    if pack:
        order = torch.argsort((~kpm).to(torch.int8), dim=1, stable=True)
        q, k, v = _pack(q, order), _pack(k, order), _pack(v, order)
        kpm = torch.gather(kpm, 1, order)
    out = fn(q, k, v, attn_mask=attn_mask, key_padding_mask=kpm, is_causal=causal, dropout_p=dropout,
             scale=scale, **opts)
    return _unpack(out, order) if pack else out


def _attend(variant: str, module, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
            causal: bool, scale, dropout: float) -> Tensor:
    fn, _ = variant_function(variant)
    opts = _resolved(variant, get_options(module, variant), q.shape[1])
    dtype = _DTYPES[opts.pop("compute_dtype")]
    if dtype is not None and dtype != q.dtype:
        if mask is not None and mask.is_floating_point():
            mask = mask.to(dtype)
        out = _attend_opts(variant, fn, q.to(dtype), k.to(dtype), v.to(dtype), mask, causal, scale, dropout, opts)
        return out.to(q.dtype)
    return _attend_opts(variant, fn, q, k, v, mask, causal, scale, dropout, opts)


def _attend_opts(variant, fn, q, k, v, mask, causal, scale, dropout, opts) -> Tensor:
    B, H, Nq, _ = q.shape
    Nk = k.shape[2]
    if variant in NO_SCALE:
        scale = None
    if variant == "softmax":  # exactly transformers' sdpa_attention_forward
        is_c = Nq > 1 and mask is None and causal
        if is_c and Nk > Nq:
            k, v = k[:, :, :Nq], v[:, :, :Nq]
        return fn(q, k, v, attn_mask=mask, is_causal=is_c, dropout_p=dropout, scale=scale, **opts)
    kw = dict(opts=opts, scale=scale, dropout=dropout)
    if mask is None:
        kpm, attn_mask = None, None
        if causal and Nq > 1 and Nk > Nq:  # empty-cache prefill: later keys are placeholders
            k, v, Nk = k[:, :, :Nq], v[:, :, :Nq], Nq
    else:
        kpm, structured, m = decompose_mask(mask, causal, B, Nq, Nk)
        attn_mask = None if structured else m
        if attn_mask is not None and causal:
            raise ValueError(
                f"{attn_name(variant)}: this causal model passed a mask that is not causal & padding "
                "(sliding window, packed sequences or a custom 4-D mask); the statistics of this variant would "
                "see keys the mask hides. Use dualattn_softmax for such masks.")
    if not causal or Nq == Nk or (Nq == 1 and variant in GLOBAL_AT_LAST):
        # Nq == 1 (cached decoding): the query sees every real key, and for linear and bn the
        # causal result at the last position is the non-causal one.
        return _run(fn, variant, q, k, v, kpm=kpm, causal=causal and Nq > 1, attn_mask=attn_mask, **kw)
    if Nq > Nk:
        raise ValueError(f"{attn_name(variant)}: causal attention with more queries ({Nq}) than keys ({Nk})")
    # Nq < Nk (cached decoding / chunked prefill): bottom-right alignment via zero queries in front.
    qf = torch.cat([q.new_zeros(B, H, Nk - Nq, q.shape[3]), q], dim=2)
    return _run(fn, variant, qf, k, v, kpm=kpm, causal=True, attn_mask=None, **kw)[:, :, Nk - Nq:]


def _repeat_kv(x: Tensor, H: int) -> Tensor:
    Hk = x.shape[1]
    if Hk == H:
        return x
    if H % Hk:
        raise ValueError(f"dualattn.hf: {H} query heads are not a multiple of {Hk} key/value heads")
    return x.repeat_interleave(H // Hk, dim=1)


def make_attention_forward(variant: str) -> Callable:
    """The ``AttentionInterface`` function of ``variant``.

    ``f(module, query (B,H,Nq,D), key (B,Hkv,Nk,D), value, attention_mask, scaling=None,
    dropout=0.0, **kwargs) -> (out (B, Nq, H, Dv), None)``; grouped-query key/value heads are
    repeated to the query heads.
    """
    name = attn_name(variant)

    def attention_forward(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor],
                          scaling: Optional[float] = None, dropout: float = 0.0, **kwargs):
        for unsupported in ("softcap", "position_bias", "s_aux", "sinks"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(f"{name}: `{unsupported}` is not supported (it changes the scores); use eager/sdpa")
        is_causal = kwargs.get("is_causal")
        if is_causal is None:
            is_causal = bool(getattr(module, "is_causal", False))
        H = query.shape[1]
        key, value = _repeat_kv(key, H), _repeat_kv(value, H)
        try:
            out = _attend(variant, module, query, key, value, attention_mask, bool(is_causal), scaling,
                          float(dropout))
        except (ValueError, TypeError) as e:
            if str(e).startswith(name):
                raise
            raise type(e)(f"{name} in {type(module).__name__}: {e}") from e
        return out.transpose(1, 2).contiguous(), None

    attention_forward.__name__ = f"{name}_forward"
    attention_forward.__qualname__ = attention_forward.__name__
    return attention_forward


_REGISTERED: Dict[str, Callable] = {}


def register() -> list:
    """Register every variant with ``AttentionInterface`` and ``AttentionMaskInterface`` (idempotent).

    Returns the registered names.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    for v in VARIANTS:
        name = attn_name(v)
        fn = _REGISTERED.get(name) or make_attention_forward(v)
        _REGISTERED[name] = fn
        AttentionInterface.register(name, fn)
        AttentionMaskInterface.register(name, sdpa_mask)
    return registered_names()


register()

__all__ = ["VARIANTS", "register", "registered_names", "attn_name", "variant_of", "set_options", "get_options",
           "use", "variant_function", "make_attention_forward", "decompose_mask"]
