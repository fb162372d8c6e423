"""dualattn.nn.Attention: shapes, fused vs reference, masks, capabilities, errors."""

import re

import pytest
import torch

from dualattn.nn import VARIANTS, Attention, ksvd_regularizer

OPTS = {"sh": {"factors": [1, 2, 2, 4]}, "bn+sh": {"factors": [1, 2, 4, 4], "pool": "conv"}, "sparse": {"window": 3}}


def make(variant, **kw):
    return Attention(16, 4, variant, qkv_bias=True, **{**OPTS.get(variant, {}), **kw}).double().eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_fused_matches_reference_and_shapes(variant):
    a = make(variant)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    kpm = torch.ones(2, 9, dtype=torch.bool)
    kpm[1, 6:] = False
    causal_ok = variant != "primal"
    for causal in ([False, True] if causal_ok else [False]):
        fast = a(x, key_padding_mask=kpm, is_causal=causal)
        ref, w = a(x, key_padding_mask=kpm, is_causal=causal, need_weights=True)
        a.fused = False
        ref2 = a(x, key_padding_mask=kpm, is_causal=causal)
        a.fused = True
        assert fast.shape == (2, 9, 16) and w.shape == (2, 4, 9, 9)
        torch.testing.assert_close(fast, ref, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(fast, ref2, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_poison_and_backward(variant):
    a = make(variant)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    kpm = torch.ones(2, 9, dtype=torch.bool)
    kpm[0, 7:] = False
    clean = a(x, key_padding_mask=kpm)
    x2 = x.clone()
    x2[0, 7:] = float("nan")
    x2.requires_grad_(True)
    dirty = a(x2, key_padding_mask=kpm)
    torch.testing.assert_close(dirty[kpm], clean[kpm], atol=1e-10, rtol=1e-10)
    dirty[kpm].sum().backward()
    assert torch.isfinite(x2.grad[kpm]).all()
    for p in a.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_cross_attention():
    a = Attention(16, 4, "bn", kv_dim=8)
    x, c = torch.randn(2, 5, 16), torch.randn(2, 11, 8)
    out, w = a(x, context=c, need_weights=True)
    assert out.shape == (2, 5, 16) and w.shape == (2, 4, 5, 11)


def test_head_attributes_and_default_factors():
    a = Attention(64, 8, "sh")
    assert (a.num_heads, a.head_dim, a.variant) == (8, 8, "sh")
    assert a.options["factors"] == [1, 1, 2, 2, 4, 4, 8, 8]


def test_sh_all_ones_equals_softmax_module():
    torch.manual_seed(0)
    s = Attention(16, 4, "softmax")
    h = Attention(16, 4, "sh", factors=[1, 1, 1, 1])
    h.load_state_dict(s.state_dict())
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(h(x, is_causal=True), s(x, is_causal=True))


def test_unsupported_combinations_raise_with_reason():
    x = torch.randn(1, 6, 16)
    m = torch.ones(6, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match="causal.*whole sequence"):
        Attention(16, 4, "primal")(x, is_causal=True)
    with pytest.raises(ValueError, match="cross"):
        Attention(16, 4, "primal")(x, context=x)
    with pytest.raises(ValueError, match="O\\(N\\)"):
        Attention(16, 4, "linear")(x, attn_mask=m)
    with pytest.raises(ValueError, match="pooled"):
        Attention(16, 4, "sh")(x, attn_mask=m)
    with pytest.raises(ValueError, match="attn_drop on the fast path.*attn_drop=0.0"):  # at construction
        Attention(16, 4, "linear", attn_drop=0.1)
    lin = Attention(16, 4, "linear", attn_drop=0.1, fused=False)
    assert lin(x).shape == (1, 6, 16)  # reference path supports dropout
    lin.fused = True
    with pytest.raises(ValueError, match="attn_drop"):
        lin(x)
    lin.eval()
    assert lin(x).shape == (1, 6, 16)  # no dropout in eval


def test_constructor_errors():
    with pytest.raises(ValueError, match="variant"):
        Attention(16, 4, "flash")
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 4)
    with pytest.raises(TypeError, match="unknown option"):
        Attention(16, 4, "softmax", factors=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="factors"):
        Attention(16, 4, "sh", factors=[1, 2])
    with pytest.raises(ValueError, match="`x`"):
        Attention(16, 4)(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="key_padding_mask"):
        Attention(16, 4)(torch.randn(2, 5, 16), key_padding_mask=torch.ones(2, 4, dtype=torch.bool))


def test_primal_ksvd_regularizer_trains():
    a = Attention(16, 4, "primal", low_rank=3)
    assert ksvd_regularizer(torch.nn.Linear(2, 2)).item() == 0.0
    x = torch.randn(2, 12, 16)
    a(x)
    loss = ksvd_regularizer(a)
    assert loss.ndim == 0 and loss.item() >= 0
    loss.backward()
    assert a.w_e.grad is not None and a.lam.grad is not None


def test_bf16_forward_finite():
    for v in VARIANTS:
        a = Attention(16, 4, v, **OPTS.get(v, {})).to(torch.bfloat16)
        out = a(torch.randn(2, 20, 16, dtype=torch.bfloat16), is_causal=v != "primal")
        assert torch.isfinite(out).all(), v


@pytest.mark.slow
def test_compile_module_smoke():
    a = Attention(16, 4, "bn+sh", factors=[1, 2, 2, 4]).eval()
    x = torch.randn(2, 12, 16)
    kpm = torch.ones(2, 12, dtype=torch.bool)
    kpm[1, 9:] = False
    c = torch.compile(a, fullgraph=True)
    torch.testing.assert_close(c(x, key_padding_mask=kpm), a(x, key_padding_mask=kpm), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant, bad, arg", [
    ("bn", {"eps": 0.0}, "eps"),
    ("bn", {"beta": float("nan")}, "beta"),
    ("bn+sh", {"beta": float("inf")}, "beta"),
    ("linear-bn", {"eps": float("nan")}, "eps"),
    ("sparse", {"window": -1}, "window"),
    ("sparse", {"pattern": "random"}, "pattern"),
    ("sparse", {"topk": 0}, "topk"),
    ("linear", {"chunk_size": 0}, "chunk_size"),
    ("sh", {"pool": "max"}, "pool"),
    ("sh", {"factors": [1, 2, 0, 2]}, "factor"),
    ("primal", {"low_rank": 0}, "low_rank"),
    ("primal", {"num_samples": -3}, "num_samples"),
])
def test_bad_options_fail_at_construction(variant, bad, arg):
    with pytest.raises(ValueError, match=re.escape(f"Attention(variant='{variant}')") + f".*{arg}"):
        Attention(16, 4, variant, **bad)


def test_options_are_validated_and_completed():
    a = Attention(16, 4, "bn+sh", beta=0.5)
    assert a.options == {"factors": [1, 2, 4, 8], "pool": "avg", "beta": 0.5, "eps": 1e-5}
    assert Attention(16, 4, "linear", attn_drop=0.1, fused=False).fused is False
