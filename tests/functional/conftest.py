"""Shared helpers for functional tests (exposed through the `h` fixture; importlib mode)."""

import math
import types

import pytest
import torch

import dualattn.functional as A

FACTORS = [1, 2, 3, 4]


def make_qkv(B=2, H=4, N=13, D=8, dtype=torch.float64, Nk=None, Dv=None, requires_grad=False):
    Nk = N if Nk is None else Nk
    q = torch.randn(B, H, N, D, dtype=dtype)
    k = torch.randn(B, H, Nk, D, dtype=dtype)
    v = torch.randn(B, H, Nk, Dv or D, dtype=dtype)
    if requires_grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return q, k, v


def padding_mask(B, N):
    m = torch.ones(B, N, dtype=torch.bool)
    m[0, N - 3 :] = False
    m[-1, 1] = False
    m[-1, N - 5 :] = False
    return m


# name -> (function, options)
VARIANTS = {
    "softmax": (A.softmax_attention, {}),
    "linear": (A.linear_attention, {"chunk_size": 4}),
    "sparse-local": (A.sparse_attention, {"pattern": "local", "window": 3}),
    "sparse-strided": (A.sparse_attention, {"pattern": "local+strided", "window": 1, "stride": 4}),
    "sparse-topk": (A.sparse_attention, {"pattern": "topk", "topk": 4, "chunk_size": 5}),
    "bn": (A.bn_attention, {"beta": 0.7}),
    "sh": (A.sh_attention, {"factors": FACTORS}),
    "sh-stride": (A.sh_attention, {"factors": FACTORS, "pool": "stride"}),
    "sh-conv": (A.sh_attention, {"factors": FACTORS, "pool": "conv"}),
    "bn+sh": (A.bn_sh_attention, {"factors": FACTORS}),
    "linear-bn": (A.linear_bn_attention, {"chunk_size": 4}),
}


def options(name, D=8, dtype=torch.float64):
    fn, opts = VARIANTS[name]
    opts = dict(opts)
    if opts.get("pool") == "conv":
        g = torch.Generator().manual_seed(1)
        opts["conv_weight_k"] = [torch.rand(D, r, generator=g, dtype=dtype) for r in FACTORS]
        opts["conv_weight_v"] = [torch.rand(D, r, generator=g, dtype=dtype) for r in FACTORS]
    return fn, opts


def pytest_generate_tests(metafunc):
    if "variant" in metafunc.fixturenames:
        metafunc.parametrize("variant", list(VARIANTS))


@pytest.fixture
def h():
    return types.SimpleNamespace(
        make_qkv=make_qkv, padding_mask=padding_mask, options=options, VARIANTS=VARIANTS, FACTORS=FACTORS,
        literal_bn=literal_bn, literal_sh=literal_sh, literal_linear=literal_linear,
    )



def literal_bn(q, k, v, *, kpm=None, causal=False, beta=1.0, eps=1e-5):
    """out_i = sum_j softmax_j(q^_i . k^_j / sqrt(D)) v_j, stats of the visible valid keys, per (b, h)."""
    B, H, N, D = q.shape
    out = torch.zeros(B, H, N, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                idx = [j for j in range(k.shape[2]) if (kpm is None or kpm[b, j]) and (not causal or j <= i)]
                if not idx:
                    continue
                ks = k[b, h, idx]
                mu = ks.mean(0)
                s = torch.sqrt(ks.var(0, unbiased=False) + eps)
                qh = (q[b, h, i] - beta * mu) / s
                kh = (ks - beta * mu) / s
                w = torch.softmax(kh @ qh / math.sqrt(D), dim=0)
                out[b, h, i] = w @ v[b, h, idx]
    return out


def literal_sh(q, k, v, factors, *, kpm=None, causal=False, bn=False, beta=1.0, eps=1e-5):
    """Per head: average-pool the valid members of each block of r keys, then (BN-)softmax attention.

    Causal: block ``[s, s + r - 1]`` is visible to query ``i`` iff ``s + r - 1 <= i`` (a partial
    last block is visible to no query).
    """
    B, H, N, D = q.shape
    out = torch.zeros(B, H, N, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            r = factors[h]
            blocks = []
            for s in range(0, N, r):
                mem = [j for j in range(s, min(s + r, N)) if kpm is None or kpm[b, j]]
                if mem:
                    blocks.append((s + r - 1, k[b, h, mem].mean(0), v[b, h, mem].mean(0)))
            for i in range(N):
                vis = [blk for blk in blocks if not causal or blk[0] <= i]
                if not vis:
                    continue
                ks = torch.stack([blk[1] for blk in vis])
                vs = torch.stack([blk[2] for blk in vis])
                qi = q[b, h, i]
                if bn:
                    mu = ks.mean(0)
                    s_ = torch.sqrt(ks.var(0, unbiased=False) + eps)
                    qi, ks = (qi - beta * mu) / s_, (ks - beta * mu) / s_
                out[b, h, i] = torch.softmax(ks @ qi / math.sqrt(D), 0) @ vs
    return out


def literal_linear(q, k, v, *, kpm=None, causal=False):
    """out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j), phi = elu + 1."""
    phi = lambda x: torch.nn.functional.elu(x) + 1  # noqa: E731
    B, H, N, D = q.shape
    out = torch.zeros(B, H, N, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                idx = [j for j in range(k.shape[2]) if (kpm is None or kpm[b, j]) and (not causal or j <= i)]
                a = phi(k[b, h, idx]) @ phi(q[b, h, i])
                out[b, h, i] = (a[:, None] * v[b, h, idx]).sum(0) / a.sum()
    return out
