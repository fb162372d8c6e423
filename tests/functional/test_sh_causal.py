"""Causal Attention-SH / BN+SH: row i depends only on tokens <= i, never on the sequence length.

Rule under test: pooled block b (positions b r .. (b+1) r - 1) is visible to query i iff
(b+1) r - 1 <= i (avg/conv) or b r <= i (stride); a partial last block is visible to no query.
"""

import pytest
import torch

import dualattn.functional as A

TOL = dict(atol=1e-10, rtol=1e-10)
FACTORS = [1, 2, 3, 4]
FNS = {"sh": A.sh_attention, "bn+sh": A.bn_sh_attention}


def _qkv(N, *, B=2, H=4, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, D, generator=g, dtype=torch.float64) for _ in range(3)]


def _conv(H=4, D=3, factors=FACTORS, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {f"conv_weight_{n}": [torch.randn(D, r, generator=g, dtype=torch.float64) for r in factors] for n in "kv"}


def _opts(pool):
    return dict(factors=FACTORS, pool=pool, **(_conv() if pool == "conv" else {}))


@pytest.mark.parametrize("pool", ["avg", "stride", "conv"])
@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kind", ["sh", "bn+sh"])
def test_prefix_invariance(kind, impl, pool):
    """Rows 0..i on the full sequence == the sequence cut right after i, for every i."""
    fn = FNS[kind]
    for N, seed in ((13, 0), (7, 1)):  # 13, 7: not a multiple of 2, 3 or 4
        q, k, v = _qkv(N, seed=seed)
        full = fn(q, k, v, is_causal=True, impl=impl, **_opts(pool))
        assert full.isfinite().all()
        for i in range(N):
            cut = fn(q[:, :, : i + 1], k[:, :, : i + 1], v[:, :, : i + 1], is_causal=True, impl=impl, **_opts(pool))
            torch.testing.assert_close(full[:, :, : i + 1], cut, **TOL, msg=f"N={N}, i={i}")


@pytest.mark.parametrize("pool", ["avg", "stride", "conv"])
@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kind", ["sh", "bn+sh"])
def test_right_padding_invariance(kind, impl, pool):
    """Padding a row on the right with masked keys leaves its real rows unchanged."""
    fn = FNS[kind]
    lens, Np = [5, 9], 12  # blocks straddling the padding boundary for every factor > 1
    q, k, v = _qkv(Np, seed=3)
    kpm = torch.arange(Np)[None, :] < torch.tensor(lens)[:, None]
    padded = fn(q, k, v, key_padding_mask=kpm, is_causal=True, impl=impl, **_opts(pool))
    assert padded.isfinite().all()
    for b, n in enumerate(lens):
        s = slice(b, b + 1)
        alone = fn(q[s, :, :n], k[s, :, :n], v[s, :, :n], is_causal=True, impl=impl, **_opts(pool))
        torch.testing.assert_close(padded[s, :, :n], alone, **TOL, msg=f"row {b}, length {n}")


def test_padding_inside_a_block_pools_real_members_only():
    """A padded key inside a complete block: the block is the mean of its real members, shown once complete."""
    q, k, v = _qkv(8, B=1, H=1, seed=4)
    kpm = torch.ones(1, 8, dtype=torch.bool)
    kpm[0, 5] = False
    out = A.sh_attention(q, k, v, factors=[4], key_padding_mask=kpm, is_causal=True, impl="reference")
    kp = torch.stack([k[0, 0, 0:4].mean(0), k[0, 0, [4, 6, 7]].mean(0)])
    vp = torch.stack([v[0, 0, 0:4].mean(0), v[0, 0, [4, 6, 7]].mean(0)])
    s = kp @ q[0, 0].T / 3 ** 0.5  # (2 blocks, 8 queries)
    torch.testing.assert_close(out[0, 0, :3], torch.zeros(3, 3, dtype=torch.float64), **TOL)
    for i in range(3, 7):
        torch.testing.assert_close(out[0, 0, i], vp[0], **TOL)  # only block 0 visible: weight 1
    torch.testing.assert_close(out[0, 0, 7], torch.softmax(s[:, 7], 0) @ vp, **TOL)


@pytest.mark.parametrize("kind", ["sh", "bn+sh"])
def test_partial_last_block_and_early_queries(kind):
    """Queries i < r - 1 output zeros; the partial last block changes no row (it is seen by none)."""
    fn = FNS[kind]
    q, k, v = _qkv(10, seed=5)  # factor 4: blocks [0..3], [4..7], partial [8, 9]
    out = fn(q, k, v, factors=FACTORS, is_causal=True)
    torch.testing.assert_close(out[:, 3, :3], torch.zeros(2, 3, 3, dtype=torch.float64), **TOL)
    assert (out[:, 3, 3].abs() > 0).all()
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 8:] += 5.0
    v2[:, :, 8:] -= 5.0
    out2 = fn(q, k2, v2, factors=[4, 4, 4, 4], is_causal=True)
    ref = fn(q, k, v, factors=[4, 4, 4, 4], is_causal=True)
    torch.testing.assert_close(out2, ref, **TOL)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("pool", ["avg", "stride", "conv"])
@pytest.mark.parametrize("kind", ["sh", "bn+sh"])
def test_fast_matches_reference(kind, pool, padded):
    fn = FNS[kind]
    for N in (1, 3, 11, 12):
        q, k, v = _qkv(N, seed=N)
        kpm = (torch.arange(N)[None, :] < torch.tensor([N, max(N - 2, 1)])[:, None]) if padded else None
        fast = fn(q, k, v, key_padding_mask=kpm, is_causal=True, impl="fast", **_opts(pool))
        ref = fn(q, k, v, key_padding_mask=kpm, is_causal=True, impl="reference", **_opts(pool))
        torch.testing.assert_close(fast, ref, **TOL, msg=f"N={N}")


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("kind", ["sh", "bn+sh"])
def test_gradcheck(kind, impl):
    fn = FNS[kind]
    q, k, v = (t.requires_grad_() for t in _qkv(7, B=1, H=4, D=2, seed=6))
    kpm = torch.tensor([[True] * 6 + [False]])
    f = lambda q, k, v: fn(q, k, v, factors=FACTORS, key_padding_mask=kpm, is_causal=True, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, k, v))
    g = lambda q, k, v: fn(q, k, v, factors=FACTORS, is_causal=True, impl=impl)  # noqa: E731
    assert torch.autograd.gradcheck(g, (q, k, v))
