"""The variant registry: one record per attention variant, read by every layer of the package.

Each variant file (``softmax.py``, ``linear.py``, ...) calls :func:`register` once per variant
it defines. Everything else reads the registry:

* :class:`dualattn.nn.Attention` (option validation at construction, what is supported, which
  function to call), :func:`dualattn.nn.swap_attention`;
* the functional API's ``VARIANT_FUNCTIONS`` and ``dualattn.nn``'s ``VARIANT_OPTIONS`` and
  ``CAPABILITIES`` (live read-only views of this registry);
* the training config's ``model.variant`` / ``model.variant_options`` validation;
* ``dualattn.hf`` (transformers integration) and the tests.

Usage::

    from dualattn.functional.registry import get_variant
    var = get_variant("bn")
    opts = var.validate_options({"beta": 0.5}, num_heads=8)  # defaults filled in, values checked
    reasons = var.not_supported(is_causal=True, attn_mask=mask, dropout_p=0.1, impl="auto", options=opts)
    if reasons: raise ValueError("; ".join(reasons))
    out = var.function(q, k, v, is_causal=True, **opts)

Adding a variant = one file that defines its function and calls :func:`register` (see
``tests/functional/test_registry.py`` for a toy variant registered from a test).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

#: Features a variant may or may not support (keys of ``Variant.features``).
FEATURES = ("attn_mask", "causal", "cross", "attn_drop")

#: How a requested feature is described in error messages.
FEATURE_NAMES = {"attn_mask": "attn_mask", "causal": "causal", "cross": "cross-attention", "attn_drop": "attn_drop"}


# --------------------------------------------------------------------------- option validators
def _fmt(name: Optional[str]) -> str:
    return f"{name}: " if name else ""


def positive_int(value, *, option: str, name: Optional[str] = None, ctx: Optional[dict] = None):
    """An ``int >= 1`` (not bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{_fmt(name)}`{option}` must be a positive int, got {value!r}")
    return value


def non_negative_int(value, *, option: str, name: Optional[str] = None, ctx: Optional[dict] = None):
    """An ``int >= 0`` (not bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{_fmt(name)}`{option}` must be a non-negative int, got {value!r}")
    return value


def optional_positive_int(value, *, option: str, name: Optional[str] = None, ctx: Optional[dict] = None):
    """``None`` or an ``int >= 1``."""
    return None if value is None else positive_int(value, option=option, name=name)


def finite_float(value, *, option: str, name: Optional[str] = None, ctx: Optional[dict] = None):
    """A finite real number (NaN/inf rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{_fmt(name)}`{option}` must be a finite float, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{_fmt(name)}`{option}` must be a finite float, got {value!r}")
    return value


def positive_finite_float(value, *, option: str, name: Optional[str] = None, ctx: Optional[dict] = None):
    """A finite real number ``> 0``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{_fmt(name)}`{option}` must be a positive finite float, got {value!r}")
    return value


def one_of(*choices) -> Callable:
    """Validator accepting exactly one of ``choices``."""

    def check(value, *, option: str, name: Optional[str] = None, ctx: Optional[dict] = None):
        if value not in choices:
            raise ValueError(f"{_fmt(name)}`{option}` must be one of {choices}, got {value!r}")
        return value

    check.__doc__ = f"One of {choices}."
    return check


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Option:
    """One variant option: its default, a validator and a one-line description.

    ``validate(value, option=..., name=..., ctx=...)`` returns the (possibly normalised) value or
    raises ``ValueError``/``TypeError`` naming the option; ``ctx`` carries layer facts such as
    ``num_heads`` (``None`` when unknown, e.g. in a bare functional call).
    """

    default: Any = None
    validate: Optional[Callable] = None
    doc: str = ""


@dataclass(frozen=True)
class Feature:
    """Support for one feature: on the fast path, on the reference path, and why not.

    ``condition(options) -> bool`` (optional) further restricts support to option values
    (e.g. SH's ``attn_mask`` only when every factor is 1); ``when`` describes that condition.
    """

    fast: bool = True
    reference: bool = True
    why: str = ""
    condition: Optional[Callable[[Mapping[str, Any]], bool]] = None
    when: str = ""

    def summary(self):
        """``True``, ``False``, ``"reference path only"`` or the condition note (``CAPABILITIES`` values)."""
        if not self.fast and not self.reference:
            return False
        if self.condition is not None:
            return self.when or "conditional"
        if self.fast and self.reference:
            return True
        return "reference path only" if self.reference else "fast path only"


SUPPORTED = Feature()


def unsupported(why: str) -> Feature:
    """A feature no path of the variant supports, with the reason."""
    return Feature(fast=False, reference=False, why=why)


def reference_only(why: str) -> Feature:
    """A feature only the reference (materialised, O(N^2)) path supports."""
    return Feature(fast=False, reference=True, why=why)


_ORDER = itertools.count()


@dataclass(frozen=True)
class Variant:
    """Everything the package knows about one attention variant.

    Attributes:
        name: registry key, e.g. ``"bn+sh"``.
        function: ``f(q, k, v, *, attn_mask, key_padding_mask, is_causal, dropout_p, scale,
            need_weights, impl, **options)`` on ``(B, H, N, D)`` tensors.
        options: option name -> :class:`Option` (what ``Attention(**variant_options)``, the config's
            ``model.variant_options`` and ``function(**options)`` accept).
        features: feature name (``FEATURES``) -> :class:`Feature`; a missing one is supported.
        summary: one line for listings.
        needs_values: False for variants without a value projection (``primal``).
        flags: free-form facts for layers, e.g. ``"primal"`` (module builds projections from X)
            or ``"pooled_heads"`` (per-head key downsampling, ``factors`` depends on num_heads).
        check: optional ``check(ctx) -> list[str]`` with variant-specific reasons (``ctx`` holds
            every argument of :meth:`not_supported`).
        module_options: options consumed by the nn layer rather than passed to ``function``.
    """

    name: str
    function: Callable
    options: Mapping[str, Option] = field(default_factory=dict)
    features: Mapping[str, Feature] = field(default_factory=dict)
    summary: str = ""
    needs_values: bool = True
    flags: frozenset = frozenset()
    check: Optional[Callable[[dict], List[str]]] = None
    module_options: Tuple[str, ...] = ()
    order: float = 0.0

    # ---------------------------------------------------------------- options
    @property
    def defaults(self) -> Dict[str, Any]:
        """Option name -> default value (a fresh dict)."""
        return {k: o.default for k, o in self.options.items()}

    def validate_options(self, options: Optional[Mapping[str, Any]] = None, *, num_heads: Optional[int] = None,
                         name: Optional[str] = None) -> Dict[str, Any]:
        """Defaults overlaid with ``options``, each value checked (and normalised, e.g. ``factors=None`` ->
        the per-head default when ``num_heads`` is known). Unknown names raise ``TypeError``."""
        name = name or f"variant {self.name!r}"
        options = dict(options or {})
        unknown = set(options) - set(self.options)
        if unknown:
            raise TypeError(f"{name} got unknown option(s) {sorted(unknown)}; it accepts {sorted(self.options)}")
        out = {**self.defaults, **options}
        ctx = {"num_heads": num_heads}
        for key, opt in self.options.items():
            if opt.validate is not None:
                out[key] = opt.validate(out[key], option=key, name=name, ctx=ctx)
        return out

    def function_options(self, options: Mapping[str, Any]) -> Dict[str, Any]:
        """The subset of ``options`` that ``function`` accepts as keywords."""
        return {k: v for k, v in options.items() if k not in self.module_options}

    # ---------------------------------------------------------------- support
    def feature(self, feature: str) -> Feature:
        if feature not in FEATURES:
            raise KeyError(f"unknown feature {feature!r}; expected one of {FEATURES}")
        return self.features.get(feature, SUPPORTED)

    def capabilities(self) -> Dict[str, Any]:
        """Legacy ``CAPABILITIES`` row: ``attn_mask``, ``causal``, ``cross`` (True/False/condition note),
        ``attn_drop`` and ``attn_drop_fast`` (dropout on the fast path, a bool)."""
        row = {f: self.feature(f).summary() for f in ("attn_mask", "causal", "cross", "attn_drop")}
        row["attn_drop_fast"] = self.feature("attn_drop").fast
        return row

    def not_supported(
        self,
        *,
        q_shape: Optional[Sequence[int]] = None,
        k_shape: Optional[Sequence[int]] = None,
        dtype=None,
        device=None,
        is_causal: bool = False,
        attn_mask=None,
        key_padding_mask=None,
        dropout_p: float = 0.0,
        need_weights: bool = False,
        impl: str = "auto",
        cross: bool = False,
        options: Optional[Mapping[str, Any]] = None,
    ) -> List[str]:
        """Reasons why this call cannot run (empty list = supported), each ``"<feature>: <why>"``.

        ``attn_mask``/``key_padding_mask`` may be tensors or any truthy placeholder (only their
        presence matters here); ``impl`` is resolved like the functions do (``"auto"`` -> fast
        unless ``need_weights``); ``options`` enables option-dependent conditions (SH factors).
        Shape/dtype checks of the tensors themselves stay in the functions.
        """
        path = "reference" if (impl == "reference" or (impl == "auto" and need_weights)) else "fast"
        reasons: List[str] = []
        requested = {
            "attn_mask": attn_mask is not None and attn_mask is not False,
            "causal": bool(is_causal),
            "cross": bool(cross),
            "attn_drop": bool(dropout_p and dropout_p > 0),
        }
        for feat, asked in requested.items():
            if not asked:
                continue
            f = self.feature(feat)
            path_ok = f.fast if path == "fast" else f.reference
            cond_ok = f.condition is None or options is None or bool(f.condition(options))
            if path_ok and cond_ok:
                continue
            where = " on the fast path" if (not path_ok and path == "fast" and f.reference) else ""
            reasons.append(f"{FEATURE_NAMES[feat]}{where}: {f.why or 'not implemented for this variant'}")
        if impl == "fast" and need_weights:
            reasons.append("need_weights with impl='fast': the fast path never materialises the weights; "
                           "use impl='reference' or 'auto'")
        if self.check is not None:
            ctx = dict(q_shape=q_shape, k_shape=k_shape, dtype=dtype, device=device, is_causal=is_causal,
                       attn_mask=attn_mask, key_padding_mask=key_padding_mask, dropout_p=dropout_p,
                       need_weights=need_weights, impl=impl, path=path, cross=cross, options=options)
            reasons.extend(self.check(ctx))
        return reasons


# --------------------------------------------------------------------------- the registry
_REGISTRY: Dict[str, Variant] = {}


def register(
    name: str,
    function: Callable,
    *,
    options: Optional[Mapping[str, Option]] = None,
    features: Optional[Mapping[str, Feature]] = None,
    summary: str = "",
    needs_values: bool = True,
    flags: Sequence[str] = (),
    check: Optional[Callable[[dict], List[str]]] = None,
    module_options: Sequence[str] = (),
    order: Optional[float] = None,
    replace: bool = False,
) -> Variant:
    """Add a variant (see :class:`Variant` for the fields) and return its record.

    ``order`` sorts listings (built-ins use 0..7; default: after every variant registered so far).
    Registering an existing name raises unless ``replace=True``.
    """
    if not (isinstance(name, str) and name):
        raise ValueError(f"register: `name` must be a non-empty str, got {name!r}")
    if name in _REGISTRY and not replace:
        raise ValueError(f"register: variant {name!r} is already registered (pass replace=True to overwrite)")
    if not callable(function):
        raise TypeError(f"register: `function` of {name!r} must be callable, got {type(function).__name__}")
    feats = dict(features or {})
    bad = set(feats) - set(FEATURES)
    if bad:
        raise ValueError(f"register: unknown feature(s) {sorted(bad)} for {name!r}; expected names from {FEATURES}")
    opts = dict(options or {})
    for k, o in opts.items():
        if not isinstance(o, Option):
            raise TypeError(f"register: option {k!r} of {name!r} must be an Option, got {type(o).__name__}")
    bad = set(module_options) - set(opts)
    if bad:
        raise ValueError(f"register: module_options {sorted(bad)} of {name!r} are not among its options")
    var = Variant(
        name=name, function=function, options=opts, features=feats, summary=summary, needs_values=needs_values,
        flags=frozenset(flags), check=check, module_options=tuple(module_options),
        order=float(1000 + next(_ORDER)) if order is None else float(order),
    )
    _REGISTRY[name] = var
    return var


def unregister(name: str) -> Variant:
    """Remove a variant (used by tests that register toy variants); returns its record."""
    _ensure_builtins()
    if name not in _REGISTRY:
        raise KeyError(f"unregister: no variant {name!r}")
    return _REGISTRY.pop(name)


def _ensure_builtins() -> None:
    # The built-in variants register when dualattn.functional is imported; importing this module
    # always imports that package first, so this is a no-op safeguard for partial imports.
    if not _REGISTRY:
        import dualattn.functional  # noqa: F401


def variant_names() -> Tuple[str, ...]:
    """Registered names in listing order (built-ins first)."""
    _ensure_builtins()
    return tuple(sorted(_REGISTRY, key=lambda n: _REGISTRY[n].order))


def get_variant(name: str) -> Variant:
    """The record of ``name``; ``ValueError`` listing the known names otherwise."""
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attention variant {name!r}; expected one of {variant_names()}") from None


# --------------------------------------------------------------------------- live read-only views
class _View(Mapping):
    """Read-only mapping name -> ``project(variant)``, always reflecting the current registry."""

    def __init__(self, project: Callable[[Variant], Any], label: str):
        self._project, self._label = project, label

    def __getitem__(self, name):
        _ensure_builtins()
        if name not in _REGISTRY:
            raise KeyError(name)
        return self._project(_REGISTRY[name])

    def __iter__(self) -> Iterator[str]:
        return iter(variant_names())

    def __len__(self) -> int:
        _ensure_builtins()
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"{self._label}({dict(self.items())!r})"


class _Names(Sequence):
    """Read-only, live tuple-like sequence of the registered variant names."""

    def __getitem__(self, i):
        return variant_names()[i]

    def __len__(self) -> int:
        return len(variant_names())

    def __contains__(self, name) -> bool:
        _ensure_builtins()
        return isinstance(name, str) and name in _REGISTRY

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (tuple, list, _Names)) else NotImplemented

    def __hash__(self):
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(variant_names())


#: name -> :class:`Variant` (live, read-only).
VARIANTS: Mapping[str, Variant] = _View(lambda v: v, "VARIANTS")
#: Registered names (live, tuple-like).
VARIANT_NAMES: Sequence[str] = _Names()
#: name -> function (live, read-only).
VARIANT_FUNCTIONS: Mapping[str, Callable] = _View(lambda v: v.function, "VARIANT_FUNCTIONS")
#: name -> {option: default} (live, read-only; each access gives fresh dicts).
VARIANT_OPTIONS: Mapping[str, Dict[str, Any]] = _View(lambda v: v.defaults, "VARIANT_OPTIONS")
#: name -> {feature: True/False/condition note, "attn_drop_fast": bool} (live, read-only).
CAPABILITIES: Mapping[str, Dict[str, Any]] = _View(lambda v: v.capabilities(), "CAPABILITIES")
