"""Robustness of the functional API found when tried as a new user would (issue 10, item 6).

* a NaN in a real (non-padded) key or value reaches the output of every variant (it is never hidden as 0);
* NaN/inf in padded keys/values gives finite gradients (zero at the padded positions);
* ``beta``/``eps`` must be finite (and ``eps > 0``) for every BN variant.
"""

import math

import pytest
import torch

import dualattn.functional as A

BN_FUNCTIONS = {"bn": A.bn_attention, "bn+sh": A.bn_sh_attention, "linear-bn": A.linear_bn_attention}


@pytest.mark.parametrize("where", ["k", "v"])
@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("causal", [False, True])
def test_nan_in_a_real_key_propagates(h, variant, causal, impl, where):
    q, k, v = h.make_qkv()
    (k if where == "k" else v)[0, :, 2] = float("nan")  # batch 0, token 2: real (no padding mask at all)
    fn, opts = h.options(variant)
    out = fn(q, k, v, is_causal=causal, impl=impl, **opts)
    assert torch.isnan(out[0]).any(), "a corrupt real key was hidden"
    assert torch.isfinite(out[1]).all(), "NaN leaked into another sequence of the batch"


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("causal", [False, True])
def test_nan_padding_gives_finite_gradients(h, variant, causal, impl):
    q, k, v = h.make_qkv()
    kpm = h.padding_mask(2, 13)
    pad = ~kpm[:, None, :, None]
    k = k.masked_fill(pad, float("nan")).requires_grad_(True)
    v = v.masked_fill(pad, float("inf")).requires_grad_(True)
    q.requires_grad_(True)
    fn, opts = h.options(variant)
    fn(q, k, v, key_padding_mask=kpm, is_causal=causal, impl=impl, **opts).sum().backward()
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert torch.isfinite(t.grad).all(), f"non-finite gradient of {name}"
    assert (k.grad.masked_select(pad) == 0).all() and (v.grad.masked_select(pad) == 0).all()


@pytest.mark.parametrize("name", list(BN_FUNCTIONS))
@pytest.mark.parametrize("bad", [{"beta": math.nan}, {"beta": math.inf}, {"beta": -math.inf},
                                 {"eps": 0.0}, {"eps": -1e-5}, {"eps": math.nan}, {"eps": math.inf}])
def test_bn_rejects_non_finite_beta_and_bad_eps(h, name, bad):
    q, k, v = h.make_qkv()
    extra = {"factors": h.FACTORS} if "sh" in name else {}
    arg = next(iter(bad))
    for impl in ("fast", "reference"):
        with pytest.raises(ValueError, match=f"`{arg}` must be a (positive )?finite float"):
            BN_FUNCTIONS[name](q, k, v, impl=impl, **extra, **bad)
    with pytest.raises(TypeError, match="`beta`"):
        BN_FUNCTIONS[name](q, k, v, beta="1.0", **extra)


def test_linear_zero_normaliser_still_gives_zero_rows():
    """A query with no visible key (fully padded batch row) keeps its documented zero output."""
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    kpm = torch.zeros(1, 5, dtype=torch.bool)
    for fn in (A.linear_attention, A.linear_bn_attention):
        for impl in ("fast", "reference"):
            out = fn(q, k, v, key_padding_mask=kpm, impl=impl)
            assert torch.equal(out, torch.zeros_like(out))
