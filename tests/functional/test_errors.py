"""Bad inputs raise clear errors naming the argument."""

import pytest
import torch

import dualattn.functional as A


def test_shape_errors(h, variant):
    q, k, v = h.make_qkv()
    fn, opts = h.options(variant)
    with pytest.raises(ValueError, match="`q`"):
        fn(q[0], k, v, **opts)
    with pytest.raises(ValueError, match="`k`"):
        fn(q, k[..., :3], v, **opts)
    with pytest.raises(ValueError, match="`v`"):
        fn(q, k, v[:, :, :5], **opts)


def test_dtype_errors(h, variant):
    q, k, v = h.make_qkv()
    fn, opts = h.options(variant)
    with pytest.raises(TypeError, match="`k`"):
        fn(q, k.float(), v, **opts)
    with pytest.raises(TypeError, match="floating"):
        fn(q.long(), k.long(), v.long(), **opts)


def test_mask_errors(h, variant):
    q, k, v = h.make_qkv()
    fn, opts = h.options(variant)
    with pytest.raises(TypeError, match="key_padding_mask"):
        fn(q, k, v, key_padding_mask=torch.ones(2, 13), **opts)
    with pytest.raises(ValueError, match="key_padding_mask"):
        fn(q, k, v, key_padding_mask=torch.ones(2, 12, dtype=torch.bool), **opts)
    with pytest.raises(ValueError, match="attn_mask"):
        fn(q, k, v, attn_mask=torch.ones(3, 13, 13, dtype=torch.bool), impl="reference", **opts)
    with pytest.raises(TypeError, match="attn_mask"):
        fn(q, k, v, attn_mask=torch.ones(13, 13, dtype=torch.int64), **opts)


def test_need_weights_needs_reference(h, variant):
    q, k, v = h.make_qkv()
    fn, opts = h.options(variant)
    with pytest.raises(ValueError, match="need_weights"):
        fn(q, k, v, need_weights=True, impl="fast", **opts)
    with pytest.raises(ValueError, match="impl"):
        fn(q, k, v, impl="turbo", **opts)


@pytest.mark.parametrize("factors", [[1, 2, 4], [1, 2, 4, 0], [1, 2, 4, 2.0], None, [1, True, 2, 2]])
def test_factor_errors(h, factors):
    q, k, v = h.make_qkv()
    with pytest.raises((ValueError, TypeError), match="factor"):
        A.sh_attention(q, k, v, factors=factors)


def test_unsupported_combinations_say_why(h):
    q, k, v = h.make_qkv()
    m = torch.ones(13, 13, dtype=torch.bool)
    with pytest.raises(ValueError, match="pooled"):
        A.sh_attention(q, k, v, factors=[1, 2, 2, 2], attn_mask=m)
    with pytest.raises(ValueError, match="O\\(N\\)"):
        A.linear_attention(q, k, v, attn_mask=m)
    with pytest.raises(ValueError, match="pool"):
        A.sh_attention(q, k, v, factors=[1, 2, 2, 2], pool="max")
    with pytest.raises(ValueError, match="conv_weight_k"):
        A.sh_attention(q, k, v, factors=[1, 2, 2, 2], pool="conv")
    with pytest.raises(ValueError, match="causal"):
        A.primal_attention(q, k, w_e=torch.randn(4, 8, 2, dtype=q.dtype), w_r=torch.randn(4, 8, 2, dtype=q.dtype), is_causal=True)
    with pytest.raises(ValueError, match="pattern"):
        A.sparse_attention(q, k, v, pattern="random")
    with pytest.raises(ValueError, match="eps"):
        A.bn_attention(q, k, v, eps=0.0)
    # the linear reference path does support a boolean attn_mask (O(N^2), explicit opt-in)
    out = A.linear_attention(q, k, v, attn_mask=m.tril(), impl="reference")
    torch.testing.assert_close(out, A.linear_attention(q, k, v, is_causal=True), atol=1e-10, rtol=1e-10)
