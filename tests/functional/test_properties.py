"""Invariances: padding poison, key permutation, causality; gradients; dtypes; compile."""

import pytest
import torch

import dualattn.functional as A

PERMUTATION_INVARIANT = ["softmax", "linear", "bn", "linear-bn", "sparse-topk"]


@pytest.mark.parametrize("poison", [float("nan"), 1e30, -1e30])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_poison_changes_nothing(h, variant, poison, causal):
    q, k, v = h.make_qkv()
    kpm = h.padding_mask(2, 13)
    fn, opts = h.options(variant)
    clean = fn(q, k, v, key_padding_mask=kpm, is_causal=causal, **opts)
    pad = ~kpm[:, None, :, None]
    kp, vp = k.masked_fill(pad, poison), v.masked_fill(pad, poison)
    for impl in ("fast", "reference"):
        dirty = fn(q, kp, vp, key_padding_mask=kpm, is_causal=causal, impl=impl, **opts)
        torch.testing.assert_close(dirty, clean, atol=1e-10, rtol=1e-10)


def test_primal_padding_poison(h):
    q, k, _ = h.make_qkv()
    kpm = h.padding_mask(2, 13)
    we, wr = torch.randn(4, 8, 3, dtype=torch.float64), torch.randn(4, 8, 3, dtype=torch.float64)
    clean = A.primal_attention(q, k, w_e=we, w_r=wr, key_padding_mask=kpm)
    dirty = A.primal_attention(q, k.masked_fill(~kpm[:, None, :, None], float("nan")), w_e=we, w_r=wr, key_padding_mask=kpm)
    torch.testing.assert_close(dirty, clean)


@pytest.mark.parametrize("name", PERMUTATION_INVARIANT)
def test_key_permutation_invariance(h, name):
    q, k, v = h.make_qkv()
    fn, opts = h.options(name)
    perm = torch.randperm(13)
    a = fn(q, k, v, **opts)
    b = fn(q, k[:, :, perm], v[:, :, perm], **opts)
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_sh_block_permutation_invariance(h):
    """Pooled SVR training pairs are a set: permuting whole blocks of r keys changes nothing."""
    q, k, v = h.make_qkv(N=12)
    perm = torch.tensor([3, 0, 2, 1]).repeat_interleave(3) * 3 + torch.arange(3).repeat(4)
    for fn in (A.sh_attention, A.bn_sh_attention):
        a = fn(q, k, v, factors=[3, 3, 3, 3])
        b = fn(q, k[:, :, perm], v[:, :, perm], factors=[3, 3, 3, 3])
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_permutation_sanity_fails_for_order_dependent(h):
    """The permutation test can fail: a local pattern depends on key order."""
    q, k, v = h.make_qkv()
    perm = torch.randperm(13)
    a = A.sparse_attention(q, k, v, pattern="local", window=2)
    b = A.sparse_attention(q, k[:, :, perm], v[:, :, perm], pattern="local", window=2)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("t", [0, 5, 11])
def test_causal_no_future_leak(h, variant, t):
    q, k, v = h.make_qkv()
    fn, opts = h.options(variant)
    a = fn(q, k, v, is_causal=True, **opts)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, t + 1 :] = torch.randn_like(k2[:, :, t + 1 :]) * 5 + 3
    v2[:, :, t + 1 :] = torch.randn_like(v2[:, :, t + 1 :]) * 5
    for impl in ("fast", "reference"):
        b = fn(q, k2, v2, is_causal=True, impl=impl, **opts)
        torch.testing.assert_close(a[:, :, : t + 1], b[:, :, : t + 1], atol=1e-10, rtol=1e-10)
    if t < 11:
        assert not torch.allclose(a[:, :, t + 1 :], fn(q, k2, v2, is_causal=True, **opts)[:, :, t + 1 :])


def test_causal_sh_first_queries_see_nothing(h):
    q, k, v = h.make_qkv()
    out, w = A.sh_attention(q, k, v, factors=[1, 2, 4, 4], is_causal=True, need_weights=True)
    assert (out[:, 2, :1] == 0).all() and (out[:, 3, :3] == 0).all() and (out[:, 3, 3] != 0).all()
    assert torch.isfinite(out).all()
    # query 5 with r=4 sees block 0 (keys 0..3) but not its own partial block (keys 4..7)
    assert (w[:, 3, 5, :4] > 0).all() and (w[:, 3, 5, 4:] == 0).all()


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_gradcheck(h, variant, impl):
    q, k, v = h.make_qkv(B=1, H=4, N=6, D=3, requires_grad=True)
    fn, opts = h.options(variant, D=3)
    kpm = torch.tensor([[True, True, True, True, False, True]])
    causal = impl == "fast"  # both branches of each path are covered by the fast/reference comparison
    assert torch.autograd.gradcheck(
        lambda q, k, v: fn(q, k, v, key_padding_mask=kpm, is_causal=causal, impl=impl, **opts), (q, k, v), fast_mode=True
    )


def test_gradcheck_primal_and_conv_weights(h):
    q, k, _ = h.make_qkv(B=1, H=2, N=5, D=3, requires_grad=True)
    we = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    wr = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, a, b: A.primal_attention(q, k, w_e=a, w_r=b), (q, k, we, wr))
    q, k, v = h.make_qkv(B=1, H=2, N=6, D=3, requires_grad=True)
    ck = [None, torch.rand(3, 2, dtype=torch.float64, requires_grad=True)]
    cv = [None, torch.rand(3, 2, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(
        lambda a, b: A.sh_attention(q, k, v, factors=[1, 2], pool="conv", conv_weight_k=[None, a], conv_weight_v=[None, b]),
        (ck[1], cv[1]),
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_low_precision_forward_finite(h, variant, dtype):
    q, k, v = h.make_qkv(N=40, D=8, dtype=dtype)
    q, k, v = q * 3, k * 3 + 2, v
    fn, opts = h.options(variant, dtype=dtype)
    kpm = h.padding_mask(2, 40)
    for causal in (False, True):
        out = fn(q, k, v, key_padding_mask=kpm, is_causal=causal, **opts)
        assert out.dtype == dtype and torch.isfinite(out).all()
        ref = fn(q.double(), k.double(), v.double(), key_padding_mask=kpm, is_causal=causal, **h.options(variant)[1]) \
            if "conv" not in variant and "topk" not in variant else None
        if ref is not None:
            tol = 0.1 if dtype == torch.bfloat16 else 1e-4
            assert (out.double() - ref).abs().max() < tol


def test_primal_shapes_and_weights(h):
    q, k, _ = h.make_qkv(N=7)
    we, wr = torch.randn(4, 8, 3, dtype=torch.float64), torch.randn(2, 4, 8, 3, dtype=torch.float64)
    out, w = A.primal_attention(q, k, w_e=we, w_r=wr, need_weights=True)
    assert out.shape == (2, 4, 7, 6) and w.shape == (2, 4, 7, 7)
    assert (w.abs() <= 1 + 1e-12).all()  # cosine kernel
    e = torch.nn.functional.normalize(q, dim=-1) @ we
    torch.testing.assert_close(out[..., :3], e)


def test_ksvd_loss_zero_at_balance():
    """J = (E_e + E_r - tr(We^T Wr))^2 is >= 0 and 0 when the energies balance the trace."""
    e, r = torch.ones(1, 1, 2, 1), torch.ones(1, 1, 2, 1)
    lam = torch.ones(1, 1)
    w = torch.ones(1, 1, 1)
    assert A.ksvd_loss(e, r, lam, w, w).item() == 0.0
    assert A.ksvd_loss(2 * e, r, lam, w, w).item() == pytest.approx(1.5**2)


@pytest.mark.slow
def test_torch_compile_smoke(h):
    q, k, v = h.make_qkv(dtype=torch.float32)
    kpm = h.padding_mask(2, 13)

    def f(q, k, v):
        a = A.bn_attention(q, k, v, key_padding_mask=kpm, is_causal=True)
        b = A.sh_attention(q, k, v, factors=[1, 2, 2, 4], key_padding_mask=kpm)
        c = A.bn_attention(q, k, v) + A.sparse_attention(q, k, v, window=2)  # fused BN Function, blocked local
        return a + b + c + A.linear_attention(q, k, v, key_padding_mask=kpm)

    cf = torch.compile(f, fullgraph=True)
    torch.testing.assert_close(cf(q, k, v), f(q, k, v), atol=1e-5, rtol=1e-5)



def test_gradcheck_bn_fused_noncausal(h):
    """The non-causal, unpadded BN fast path has a hand-written backward: check it exactly."""
    q, k, v = h.make_qkv(B=1, H=2, N=5, D=3, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: A.bn_attention(q, k, v, beta=0.7, impl="fast"), (q, k, v))
    m = torch.rand(5, 5) > 0.3
    assert torch.autograd.gradcheck(lambda q, k, v: A.bn_attention(q, k, v, attn_mask=m, impl="fast"), (q, k, v))


@pytest.mark.parametrize("pool", ["avg", "stride"])
def test_gradcheck_causal_sh_without_padding(h, pool):
    """Unpadded causal SH regroups queries by block offset (no mask tensor): check its gradients."""
    q, k, v = h.make_qkv(B=1, H=3, N=7, D=2, requires_grad=True)
    for fn in (A.sh_attention, A.bn_sh_attention):
        assert torch.autograd.gradcheck(
            lambda q, k, v: fn(q, k, v, factors=[1, 2, 3], pool=pool, is_causal=True, impl="fast"), (q, k, v),
            fast_mode=True,
        )
