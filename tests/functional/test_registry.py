"""The variant registry: views, reasons vs actual behaviour, and adding a variant from outside."""

import math

import pytest
import torch

import dualattn.functional as A
import dualattn.nn as dnn
from dualattn.functional import registry as R
from dualattn.functional.softmax import softmax_attention

BUILTINS = ("softmax", "linear", "sparse", "bn", "sh", "bn+sh", "linear-bn", "primal")


def test_builtins_and_views_read_the_registry():
    assert tuple(R.variant_names()[: len(BUILTINS)]) == BUILTINS
    assert tuple(dnn.VARIANTS)[: len(BUILTINS)] == BUILTINS
    for name in BUILTINS:
        var = R.get_variant(name)
        assert A.VARIANT_FUNCTIONS[name] is var.function
        assert dnn.VARIANT_OPTIONS[name] == var.defaults
        assert dnn.CAPABILITIES[name] == var.capabilities()
    assert A.VARIANT_FUNCTIONS["bn+sh"] is A.bn_sh_attention
    assert dnn.VARIANT_OPTIONS["bn"] == {"beta": 1.0, "eps": 1e-5}
    with pytest.raises(TypeError):
        A.VARIANT_FUNCTIONS["x"] = softmax_attention  # read-only
    with pytest.raises(ValueError, match="unknown attention variant 'flash'.*softmax"):
        R.get_variant("flash")


def test_capabilities_table_matches_the_docs():
    """The table in docs/svr-view.md ("Paths, capabilities, errors")."""
    cap = dnn.CAPABILITIES
    for v in ("softmax", "sparse", "bn"):
        assert cap[v] == {"attn_mask": True, "causal": True, "cross": True, "attn_drop": True, "attn_drop_fast": True}
    for v in ("sh", "bn+sh"):
        assert cap[v]["attn_mask"] == "factors all 1" and cap[v]["attn_drop_fast"] is True
    for v in ("linear", "linear-bn"):
        assert cap[v]["attn_mask"] == cap[v]["attn_drop"] == "reference path only"
        assert cap[v]["causal"] is True and cap[v]["attn_drop_fast"] is False
    assert cap["primal"] == {"attn_mask": False, "causal": False, "cross": False, "attn_drop": False,
                             "attn_drop_fast": False}


def test_not_supported_reasons():
    lin, sh, primal = R.get_variant("linear"), R.get_variant("sh"), R.get_variant("primal")
    m = torch.ones(4, 4, dtype=torch.bool)
    (r,) = lin.not_supported(attn_mask=m)
    assert r.startswith("attn_mask on the fast path:") and "O(N)" in r
    assert lin.not_supported(attn_mask=m, impl="reference") == []
    assert lin.not_supported(attn_mask=m, need_weights=True) == []  # auto -> reference
    assert len(lin.not_supported(attn_mask=m, dropout_p=0.1)) == 2
    assert "attn_drop=0.0" in lin.not_supported(dropout_p=0.1)[0]
    opts = sh.validate_options({}, num_heads=4)
    assert opts["factors"] == [1, 2, 4, 8]
    assert "pooled keys" in sh.not_supported(attn_mask=m, options=opts)[0]
    assert sh.not_supported(attn_mask=m, options=sh.validate_options({"factors": [1] * 4}, num_heads=4)) == []
    reasons = primal.not_supported(is_causal=True, cross=True, attn_mask=m, dropout_p=0.1,
                                   q_shape=(1, 2, 3, 4), k_shape=(1, 2, 5, 4))
    assert [x.split(":")[0] for x in reasons] == ["attn_mask", "causal", "cross-attention", "attn_drop", "Nq != Nk (3 vs 5)"]
    assert "need_weights" in R.get_variant("softmax").not_supported(need_weights=True, impl="fast")[0]
    assert R.get_variant("softmax").not_supported(is_causal=True, attn_mask=m, dropout_p=0.5, cross=True) == []


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_reasons_predict_what_the_functions_do(h, variant, impl):
    """For every functional case: the registry says 'unsupported' exactly when the function raises."""
    name = variant.split("-")[0] if variant.startswith(("sparse", "sh-")) else variant
    var = R.get_variant(name)
    q, k, v = h.make_qkv()
    fn, opts = h.options(variant)
    assert fn is var.function
    m = torch.rand(13, 13) > 0.3
    m.fill_diagonal_(True)
    for kw in ({"attn_mask": m}, {"dropout_p": 0.2}, {"is_causal": True}, {"attn_mask": m, "dropout_p": 0.2}):
        reasons = var.not_supported(impl=impl, options=opts, **kw)
        if reasons:
            with pytest.raises(ValueError):
                fn(q, k, v, impl=impl, **kw, **opts)
        else:
            assert torch.isfinite(fn(q, k, v, impl=impl, **kw, **opts)).all()


def test_every_score_variant_has_functional_test_cases(h):
    tested = {fn for fn, _ in h.VARIANTS.values()}
    for name in BUILTINS:
        var = R.get_variant(name)
        if var.needs_values:
            assert var.function in tested, f"{name} is registered but has no case in tests/functional/conftest.py"


def test_option_validators():
    bn, sparse = R.get_variant("bn"), R.get_variant("sparse")
    assert bn.validate_options({"beta": 0}) == {"beta": 0, "eps": 1e-5}
    for bad, err in (({"beta": math.nan}, ValueError), ({"eps": 0}, ValueError), ({"beta": "1"}, TypeError),
                     ({"window": 1}, TypeError)):
        with pytest.raises(err):
            bn.validate_options(bad)
    with pytest.raises(ValueError, match="`window` must be a non-negative int"):
        sparse.validate_options({"window": -1})
    with pytest.raises(ValueError, match="`pattern` must be one of"):
        sparse.validate_options({"pattern": "random"})
    with pytest.raises(ValueError, match="`low_rank`"):
        R.get_variant("primal").validate_options({"low_rank": 0})
    assert R.get_variant("sh").validate_options({}) == {"factors": None, "pool": "avg"}  # H unknown: no default


def test_register_rejects_duplicates_and_bad_records():
    with pytest.raises(ValueError, match="already registered"):
        R.register("softmax", softmax_attention)
    with pytest.raises(ValueError, match="unknown feature"):
        R.register("tmp-bad", softmax_attention, features={"flash": R.SUPPORTED})
    with pytest.raises(TypeError, match="Option"):
        R.register("tmp-bad", softmax_attention, options={"tau": 1.0})
    assert "tmp-bad" not in R.VARIANTS


# ----------------------------------------------------------------- a variant added from outside the package
def tempered_softmax_attention(q, k, v, *, attn_mask=None, key_padding_mask=None, is_causal=False, dropout_p=0.0,
                               scale=None, need_weights=False, impl="auto", tau=2.0):
    """``softmax(q k^T / (tau sqrt(D))) v``: softmax attention at temperature ``tau``."""
    s = (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale) / tau
    return softmax_attention(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask, is_causal=is_causal,
                             dropout_p=dropout_p, scale=s, need_weights=need_weights, impl=impl)


@pytest.fixture
def toy():
    var = R.register(
        "toy-tempered",
        tempered_softmax_attention,
        options={"tau": R.Option(2.0, R.positive_finite_float, "softmax temperature")},
        features={"attn_mask": R.unsupported("the toy variant does not take masks")},
        summary="softmax at temperature tau (test only)",
    )
    try:
        yield var
    finally:
        R.unregister("toy-tempered")


def test_toy_variant_through_attention_and_config(toy):
    from dualattn.nn.models import build_model
    from dualattn.train.config import ConfigError, build_config

    assert "toy-tempered" in dnn.VARIANTS and dnn.VARIANTS[-1] == "toy-tempered"
    assert dnn.VARIANT_OPTIONS["toy-tempered"] == {"tau": 2.0} and A.VARIANT_FUNCTIONS["toy-tempered"] is toy.function
    assert dnn.CAPABILITIES["toy-tempered"]["attn_mask"] is False

    torch.manual_seed(0)
    a = dnn.Attention(16, 4, "toy-tempered", tau=0.5).double()
    s = dnn.Attention(16, 4, "softmax").double()
    s.load_state_dict(a.state_dict())
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    # tau = 0.5 on the input x == softmax on 2x through the same (bias-free) q projection
    out = a(x, is_causal=True)
    s.q_proj.weight.data.mul_(2.0)
    torch.testing.assert_close(out, s(x, is_causal=True))
    with pytest.raises(ValueError, match="`tau` must be a positive finite float"):
        dnn.Attention(16, 4, "toy-tempered", tau=0.0)  # at construction
    with pytest.raises(ValueError, match="does not support attn_mask: the toy variant does not take masks"):
        a(x, attn_mask=torch.ones(7, 7, dtype=torch.bool))

    cfg = build_config({"data": {"name": "x"}, "model": {"variant": "toy-tempered", "dim": 16, "num_heads": 4,
                                                         "variant_options": {"tau": 3.0}}})
    model = build_model(cfg.model, num_classes=3, max_len=6, in_features=5, vocab_size=None)
    assert [b.attn.options for b in model.encoder.blocks] == [{"tau": 3.0}] * 2
    assert model(torch.randn(2, 6, 5), torch.ones(2, 6, dtype=torch.bool)).shape == (2, 3)
    with pytest.raises(ConfigError, match="`tau`"):
        build_config({"data": {"name": "x"}, "model": {"variant": "toy-tempered", "variant_options": {"tau": -1}}})


def test_unregistered_toy_is_gone():
    R.register("toy-gone", softmax_attention)
    R.unregister("toy-gone")
    assert "toy-gone" not in dnn.VARIANTS and "toy-gone" not in A.VARIANT_FUNCTIONS
    with pytest.raises(ValueError, match="variant"):
        dnn.Attention(16, 4, "toy-gone")
    from dualattn.train.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="unknown attention variant 'toy-gone'"):
        build_config({"data": {"name": "x"}, "model": {"variant": "toy-gone"}})
