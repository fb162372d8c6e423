"""The attention methods the speed benchmark compares, and their memory estimates.

Every method is run as one forward + backward pass on ``q, k, v`` of shape
``(B, H, N, D)`` (``requires_grad=True``) with a fixed random output
gradient; ``torch.nn.MultiheadAttention`` instead takes ``x (B, N, H*D)`` as
query, key and value, so its time also includes the in/out projections.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

SH_FACTORS: tuple[int, ...] = (1, 1, 2, 2, 4, 4, 8, 8)
"""Attention-SH key/value down-sampling factor per head used by the benchmark (8 heads)."""

# Per-call memory models, in units of one (B, H, N, D) tensor ("io") and of one
# (B, H, N, Nk) score matrix ("scores"). Calibrated on CPU fp32 with the
# rss-hwm probe: SDPA fwd+bwd ~ 4-6 io (3 input grads, out, temporaries);
# dualattn.functional reference softmax ~ 6.1 score matrices at N=1024-2048
# (scores, masked scores, probs and their grads), SH reference ~ 3.5 pooled ones.
IO_UNITS_FAST = 8.0
IO_UNITS_REFERENCE = 8.0
SCORE_UNITS_REFERENCE = 7.0
MHA_IO_UNITS = 24.0  # x, qkv, projections and their grads, plus weights


@dataclass(frozen=True)
class Method:
    """One benchmarked attention implementation.

    ``function``: name in ``dualattn.functional`` (None for baselines);
    ``impl``: ``"fast"`` or ``"reference"`` (``"torch"`` for baselines);
    ``materialises``: whether it builds the ``(B, H, N, Nk)`` score matrix;
    ``key_fraction``: average fraction of keys each head attends over.
    """

    name: str
    label: str
    impl: str
    function: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    materialises: bool = False
    scaled_heads: bool = False
    description: str = ""

    def variant_options(self, heads: int) -> dict[str, Any]:
        """Keyword options passed to the functional (``factors`` for SH methods)."""
        opts = dict(self.options)
        if self.scaled_heads:
            opts["factors"] = sh_factors(heads)
        return opts

    def key_fraction(self, heads: int) -> float:
        """Average fraction of keys a head attends over: ``mean(1/f_h)`` for SH, else 1."""
        if not self.scaled_heads:
            return 1.0
        f = sh_factors(heads)
        return sum(1.0 / x for x in f) / len(f)

    def available(self) -> str | None:
        """None if it can run here, else the reason it cannot."""
        if self.function is None:
            return None
        try:
            mod = importlib.import_module("dualattn.functional")
        except Exception as exc:  # pragma: no cover - import errors of another package
            return f"dualattn.functional not importable: {exc!r}"
        if not callable(getattr(mod, self.function, None)):
            return f"dualattn.functional.{self.function} not implemented yet"
        return None

    def estimate_peak_bytes(self, batch: int, heads: int, n: int, head_dim: int, dtype: torch.dtype) -> int:
        """Upper estimate of the extra memory of one forward+backward call, in bytes.

        ``io_units * B*H*N*D*s + score_units * B*H*N*(key_fraction*N)*s`` with
        ``s`` the element size; score units are 0 unless the method materialises.
        """
        elt = torch.empty((), dtype=dtype).element_size()
        io = batch * heads * n * head_dim * elt
        if self.name == "mha":
            return int(MHA_IO_UNITS * io + 4 * (heads * head_dim) ** 2 * elt)
        if not self.materialises:
            return int(IO_UNITS_FAST * io)
        scores = batch * heads * n * max(1.0, self.key_fraction(heads) * n) * elt
        return int(IO_UNITS_REFERENCE * io + SCORE_UNITS_REFERENCE * scores)

    def build(
        self,
        batch: int,
        heads: int,
        n: int,
        head_dim: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> tuple[Callable[..., None], tuple[torch.Tensor, ...]]:
        """Return ``(fn, inputs)``; ``fn(*inputs)`` runs one forward+backward pass."""
        _check_shape(batch, heads, n, head_dim)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        if self.name == "mha":
            return _build_mha(batch, heads, n, head_dim, device, dtype, gen)
        q, k, v, g = (
            torch.randn(batch, heads, n, head_dim, generator=gen, dtype=dtype).to(device) for _ in range(4)
        )
        for t in (q, k, v):
            t.requires_grad_(True)
        attn = self._attention_fn(heads)

        def fwd_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
            q.grad = k.grad = v.grad = None
            out = attn(q, k, v)
            if isinstance(out, tuple):
                out = out[0]
            if out.shape != g.shape:
                raise RuntimeError(f"{self.name}: output shape {tuple(out.shape)} != {tuple(g.shape)}")
            out.backward(g)

        return fwd_bwd, (q, k, v)

    def _attention_fn(self, heads: int) -> Callable[..., torch.Tensor]:
        if self.name == "sdpa":
            return torch.nn.functional.scaled_dot_product_attention
        reason = self.available()
        if reason is not None:
            raise RuntimeError(reason)
        f = getattr(importlib.import_module("dualattn.functional"), self.function)
        opts = self.variant_options(heads)
        impl = self.impl

        def call(q, k, v):
            return f(q, k, v, impl=impl, **opts)

        return call


def _check_shape(batch: int, heads: int, n: int, head_dim: int) -> None:
    for name, val in (("batch", batch), ("heads", heads), ("n", n), ("head_dim", head_dim)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name}: expected a positive int, got {val!r}")


def _build_mha(batch, heads, n, head_dim, device, dtype, gen):
    dim = heads * head_dim
    mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True, device=device, dtype=dtype)
    x = torch.randn(batch, n, dim, generator=gen, dtype=dtype).to(device).requires_grad_(True)
    g = torch.randn(batch, n, dim, generator=gen, dtype=dtype).to(device)
    params = list(mha.parameters())

    def fwd_bwd(x: torch.Tensor) -> None:
        x.grad = None
        for p in params:
            p.grad = None
        out, _ = mha(x, x, x, need_weights=False)
        out.backward(g)

    return fwd_bwd, (x,)


def sh_factors(heads: int) -> tuple[int, ...]:
    """SH factors for ``heads`` heads: ``SH_FACTORS`` for 8 heads, else the same pattern resampled."""
    if not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads: expected a positive int, got {heads!r}")
    return tuple(SH_FACTORS[i * len(SH_FACTORS) // heads] for i in range(heads))


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("mha", "nn.MultiheadAttention", "torch", description="torch.nn.MultiheadAttention (with projections)"),
        Method("sdpa", "SDPA", "torch", description="torch.nn.functional.scaled_dot_product_attention"),
        Method("softmax", "softmax (fast)", "fast", "softmax_attention"),
        Method("softmax-ref", "softmax (reference)", "reference", "softmax_attention", materialises=True),
        Method("linear", "linear (fast)", "fast", "linear_attention"),
        Method("linear-ref", "linear (reference)", "reference", "linear_attention", materialises=True),
        Method("bn", "BN (fast)", "fast", "bn_attention"),
        Method("bn-ref", "BN (reference)", "reference", "bn_attention", materialises=True),
        Method("sh", "SH (fast)", "fast", "sh_attention", scaled_heads=True),
        Method("sh-ref", "SH (reference)", "reference", "sh_attention", materialises=True, scaled_heads=True),
        Method("bn+sh", "BN+SH (fast)", "fast", "bn_sh_attention", scaled_heads=True),
        Method("bn+sh-ref", "BN+SH (reference)", "reference", "bn_sh_attention", materialises=True, scaled_heads=True),
    ]
}

DEFAULT_METHODS: tuple[str, ...] = (
    "mha", "sdpa", "softmax", "softmax-ref", "linear", "bn", "sh", "sh-ref", "bn+sh",
)


def get_method(name: str) -> Method:
    """Look up a method by name; ValueError listing the valid names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"method: unknown {name!r}; expected one of {sorted(METHODS)}") from None
