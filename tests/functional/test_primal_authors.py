"""Cross-check of ``variant="primal"`` against a port of the authors' Primal-Attention code.

The classes and the loss below are ports of github.com/yingyichen-cyy/PrimalAttention
(Chen, Tao, Tonin, Suykens; NeurIPS 2023), copied statement by statement with only the timm
imports, AMP contexts and unrelated branches removed:

* ``AuthorsCV``: ``PrimalAttention`` in ``PrimalAttention_CV/models_primal.py``;
* ``AuthorsLRA``: the primal branch of ``Attention`` in
  ``PrimalAttention_LRA/PrimalFormer/attentions/attention.py`` plus ``PrimalCosAttention`` in
  ``attentions/attention_primal_cos.py`` (``trace_no_x=True``, as in ``bashes/run_tasks.sh``);
* ``authors_ksvd``: the KSVD loss loop of ``PrimalAttention_CV/engine_primal.py`` (identical
  to the one in ``PrimalAttention_LRA/PrimalFormer/model_wrapper.py`` with ``trace_no_x``).

Both ports are loaded with the weights of one ``dualattn.nn.Attention`` (fixed seed); ours must
match: forward <= 1e-6 (float32) / 1e-12 (float64), KSVD loss equal to the same tolerance.
Their code has no notion of padding in the sample positions (LRA samples over the padded
length and averages the loss over padded positions too), so padded batches are compared with
their code run on the unpadded sequences; the last test documents that difference.
"""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dualattn.functional.primal import init_projection_
from dualattn.nn import Attention, ksvd_regularizer


# ----------------------------------------------------------------------------- authors' code (port)
class AuthorsCV(nn.Module):
    """PrimalAttention_CV/models_primal.py::PrimalAttention (forward and gen_weights verbatim)."""

    def __init__(self, dim, num_heads=8, embed_len=197, low_rank=20, rank_multi=10, qk_bias=False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qk = nn.Linear(dim, dim * 2, bias=qk_bias)
        self.proj = nn.Linear(dim, dim)
        self.low_rank = low_rank
        self.rank_multi = rank_multi
        self.embed_len = embed_len
        self.we = nn.Parameter(nn.init.orthogonal_(torch.Tensor(self.num_heads, min(self.embed_len, self.low_rank * self.rank_multi), self.low_rank)))
        self.wr = nn.Parameter(nn.init.orthogonal_(torch.Tensor(self.num_heads, min(self.embed_len, self.low_rank * self.rank_multi), self.low_rank)))
        self.Lambda = nn.Parameter(nn.init.uniform_(torch.Tensor(self.num_heads, self.low_rank)))
        self.concate_weight = nn.Linear(2 * self.low_rank, self.head_dim)

    def gen_weights(self, x):
        # evenly sample
        if self.embed_len > self.low_rank * self.rank_multi:
            indices = torch.linspace(0, x.shape[1] - 1, self.low_rank * self.rank_multi, dtype=int)
            x = x.transpose(-2, -1).reshape(x.size(0), self.num_heads, self.head_dim, x.size(1))
            x = x[:, :, :, indices].transpose(1, 2)
        else:
            x = x.transpose(-2, -1).reshape(x.size(0), self.num_heads, self.head_dim, x.size(1))
            x = x.transpose(1, 2)
        we = torch.einsum('bahd,hde->bahe', x, self.we.type_as(x)).transpose(1, 2)
        wr = torch.einsum('bahd,hde->bahe', x, self.wr.type_as(x)).transpose(1, 2)
        return we, wr

    def feature_map(self, x):
        return F.normalize(x, p=2, dim=-1)

    def forward(self, x):
        B, N, C = x.shape
        qk = self.qk(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = qk.unbind(0)
        we, wr = self.gen_weights(x)
        q = self.feature_map(q)
        k = self.feature_map(k)
        escore = torch.einsum('...nd,...de->...ne', q, we)
        rscore = torch.einsum('...nd,...de->...ne', k, wr)
        score = torch.cat((escore, rscore), dim=-1)
        attn_out = self.concate_weight(score)
        attn_out = attn_out.transpose(1, 2).reshape(B, N, C)
        attn_out = self.proj(attn_out)
        return attn_out, [escore, rscore, self.we, self.wr], self.Lambda


class AuthorsLRA(nn.Module):
    """PrimalFormer/attentions/attention.py::Attention (primal_cos) + attention_primal_cos.py."""

    def __init__(self, dim, num_head, low_rank, rank_multi):
        super().__init__()
        self.num_head, self.head_dim = num_head, dim // num_head
        self.low_rank, self.rank_multi = low_rank, rank_multi
        self.W_q = nn.Linear(dim, num_head * self.head_dim)
        self.W_k = nn.Linear(dim, num_head * self.head_dim)
        self.We = nn.Parameter(nn.init.orthogonal_(torch.Tensor(self.num_head, self.low_rank * self.rank_multi, self.low_rank)))
        self.Wr = nn.Parameter(nn.init.orthogonal_(torch.Tensor(self.num_head, self.low_rank * self.rank_multi, self.low_rank)))
        self.Lambda = nn.Parameter(nn.init.uniform_(torch.Tensor(self.num_head, self.low_rank)))  # PrimalCosAttention
        self.concate_weight = nn.Linear(2 * self.low_rank, self.head_dim)  # PrimalCosAttention
        self.ff = nn.Linear(num_head * self.head_dim, dim)

    def primal_cos(self, Q, K, we, wr, mask):  # PrimalCosAttention.forward, trace_no_x=True
        queries = F.normalize(Q, p=2, dim=-1)
        keys = F.normalize(K, p=2, dim=-1)
        escore = torch.einsum('...nd,...de->...ne', queries, we[0])
        rscore = torch.einsum('...nd,...de->...ne', keys, wr[0])
        score = torch.cat((escore, rscore), dim=-1)
        attn_out = self.concate_weight(score) * mask[:, None, :, None]
        return attn_out, [escore, rscore, we[-1], wr[-1], queries, keys], self.Lambda

    def forward(self, X, mask):
        Q = self.split_heads(self.W_q(X))
        K = self.split_heads(self.W_k(X))
        indices = torch.linspace(0, X.shape[1] - 1, self.low_rank * self.rank_multi, dtype=int)
        X = X.transpose(-2, -1).reshape(X.size(0), self.num_head, self.head_dim, X.size(1))
        X = X[:, :, :, indices].transpose(1, 2)
        we = torch.einsum('bahd,hde->bahe', X, self.We.type_as(X)).transpose(1, 2)
        wr = torch.einsum('bahd,hde->bahe', X, self.Wr.type_as(X)).transpose(1, 2)
        attn_out, scores, Lambda = self.primal_cos(Q, K, [we, self.We], [wr, self.Wr], mask)
        attn_out = self.combine_heads(attn_out)
        return self.ff(attn_out), scores, Lambda

    def combine_heads(self, X):
        X = X.transpose(1, 2)
        return X.reshape(X.size(0), X.size(1), self.num_head * self.head_dim)

    def split_heads(self, X):
        X = X.reshape(X.size(0), X.size(1), self.num_head, self.head_dim)
        return X.transpose(1, 2)


def authors_ksvd(score_list, Lambda_list):
    """PrimalAttention_CV/engine_primal.py, the ``loss_ksvd`` loop (verbatim)."""
    loss_ksvd = 0
    for i in range(len(score_list)):
        Lambda_diag = torch.diag_embed(Lambda_list[i])
        loss_escore = torch.mean((torch.einsum('...nd,...ds->...ns', score_list[i][0], Lambda_diag.unsqueeze(0).repeat(score_list[i][0].size(0), 1, 1, 1))).norm(dim=-1, p=2) ** 2) / 2
        loss_rscore = torch.mean((torch.einsum('...nd,...ds->...ns', score_list[i][1], Lambda_diag.unsqueeze(0).repeat(score_list[i][1].size(0), 1, 1, 1))).norm(dim=-1, p=2) ** 2) / 2
        loss_trace = torch.einsum('...ps,...pd->...sd', score_list[i][2], score_list[i][3].type_as(score_list[i][2])).mean(dim=0).trace()
        loss_ksvd = loss_ksvd + (loss_escore + loss_rscore - loss_trace) ** 2
    return loss_ksvd / len(score_list)


# ----------------------------------------------------------------------------- weight transfer
DIM, HEADS, RANK, SAMPLES = 24, 3, 2, 20  # rank_multi = 10, the authors' default


def ours(dtype, seed=0, **opts):
    torch.manual_seed(seed)
    opts = {"num_samples": SAMPLES, **opts}
    a = Attention(DIM, HEADS, "primal", qkv_bias=True, low_rank=RANK, **opts).to(dtype)
    with torch.no_grad():  # non-trivial biases and singular values
        for p in (a.q_proj.bias, a.k_proj.bias, a.out_proj.bias, a.w_c.bias):
            p.normal_()
        a.lam.uniform_(0.5, 2.0)
    return a.eval()


def cv_port(a, embed_len):
    m = AuthorsCV(DIM, HEADS, embed_len=embed_len, low_rank=RANK, rank_multi=SAMPLES // RANK, qk_bias=True).to(a.w_e.dtype)
    rows = min(embed_len, a.w_e.shape[1])
    with torch.no_grad():
        m.qk.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight]))
        m.qk.bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias]))
        m.proj.load_state_dict(a.out_proj.state_dict())
        m.concate_weight.load_state_dict(a.w_c.state_dict())
        m.we.copy_(a.w_e[:, :rows])
        m.wr.copy_(a.w_r[:, :rows])
        m.Lambda.copy_(a.lam)
    return m


def lra_port(a):
    m = AuthorsLRA(DIM, HEADS, RANK, SAMPLES // RANK).to(a.w_e.dtype)
    with torch.no_grad():
        m.W_q.load_state_dict(a.q_proj.state_dict())
        m.W_k.load_state_dict(a.k_proj.state_dict())
        m.ff.load_state_dict(a.out_proj.state_dict())
        m.concate_weight.load_state_dict(a.w_c.state_dict())
        m.We.copy_(a.w_e)
        m.Wr.copy_(a.w_r)
        m.Lambda.copy_(a.lam)
    return m


TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def close(x, y, dtype):
    err = (x - y).abs().max().item()
    scale = max(1.0, y.abs().max().item())
    assert err <= TOL[dtype] * scale, f"max |ours - authors| = {err:.3g}"


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("N", [57, 200, 20, 13])
def test_matches_authors_cv_forward_and_loss(dtype, N):
    """B=3, no padding: N=57 (truncating != rounding positions), N >> n, N = n, N < n.

    For N < n their model has ``W~`` of N rows and uses every token: our forward (n rows, the
    first N used) equals it; the loss's trace term runs over all of our n rows, so the loss is
    compared for a model built like theirs, ``num_samples = N``.
    """
    a = ours(dtype)
    x = torch.randn(3, N, DIM, dtype=dtype, generator=torch.Generator().manual_seed(N))
    out = a(x)
    ref, scores, lam = cv_port(a, embed_len=N)(x)
    close(out, ref, dtype)
    if N < SAMPLES:
        a = ours(dtype, num_samples=N)
        out = a(x)
        ref, scores, lam = cv_port(a, embed_len=N)(x)
        close(out, ref, dtype)
    close(a.ksvd_loss(), authors_ksvd([scores], [lam]), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_authors_lra_forward_and_loss(dtype):
    a = ours(dtype, seed=1)
    x = torch.randn(4, 57, DIM, dtype=dtype, generator=torch.Generator().manual_seed(7))
    out = a(x, key_padding_mask=torch.ones(4, 57, dtype=torch.bool))
    ref, scores, lam = lra_port(a)(x, torch.ones(4, 57, dtype=dtype))
    close(out, ref, dtype)
    close(a.ksvd_loss(), authors_ksvd([scores], [lam]), dtype)


def test_loss_over_layers_matches_authors():
    """``ksvd_regularizer`` = the authors' sum over layers / number of layers."""
    dtype = torch.float64
    layers = [ours(dtype, seed=s) for s in (2, 3)]
    x = torch.randn(2, 57, DIM, dtype=dtype)
    score_list, lam_list = [], []
    for a in layers:
        a(x)
        _, sc, lam = cv_port(a, 57)(x)
        score_list.append(sc)
        lam_list.append(lam)
    close(ksvd_regularizer(nn.ModuleList(layers)), authors_ksvd(score_list, lam_list), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padded_batch_equal_lengths_matches_authors_unpadded(dtype):
    """B=3 sequences of length 45 padded to 57 (padding holds garbage): same as their code on (3, 45)."""
    a = ours(dtype, seed=4)
    x = torch.randn(3, 45, DIM, dtype=dtype)
    xp = torch.cat([x, 1e4 * torch.randn(3, 12, DIM, dtype=dtype)], 1)
    kpm = torch.arange(57)[None].expand(3, 57) < 45
    out = a(xp, key_padding_mask=kpm)
    ref, scores, lam = lra_port(a)(x, torch.ones(3, 45, dtype=dtype))
    close(out[:, :45], ref, dtype)
    close(a.ksvd_loss(), authors_ksvd([scores], [lam]), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padded_ragged_batch_matches_authors_per_sequence(dtype):
    """Lengths 57, 40, 13 padded to 64 (13 < n: all tokens, as their CV code).

    Forward: each sequence equals their code run on it alone. Loss: their loss formula applied
    to their per-sequence scores concatenated along the tokens (the mean over every real token
    of the batch, which is what ``batch-mean-squared`` computes with a mask).
    """
    a = ours(dtype, seed=5)
    lengths = [57, 40, 13]
    seqs = [torch.randn(1, L, DIM, dtype=dtype) for L in lengths]
    x = torch.zeros(3, 64, DIM, dtype=dtype).fill_(float("nan"))
    kpm = torch.zeros(3, 64, dtype=torch.bool)
    for b, (L, s) in enumerate(zip(lengths, seqs)):
        x[b, :L], kpm[b, :L] = s[0], True
    out = a(x, key_padding_mask=kpm)
    escores, rscores = [], []
    for b, (L, s) in enumerate(zip(lengths, seqs)):
        port = cv_port(a, embed_len=L)
        ref, sc, lam = port(s)
        close(out[b, :L], ref[0], dtype)
        escores.append(sc[0])
        rscores.append(sc[1])
    joined = [torch.cat(escores, 2), torch.cat(rscores, 2), a.w_e, a.w_r]
    close(a.ksvd_loss(), authors_ksvd([joined], [a.lam]), dtype)
    assert torch.isfinite(out).all()


def test_round_positions_and_per_sample_loss_differ_from_authors():
    """The non-default options are real alternatives: at N=57 they move output and loss."""
    dtype = torch.float64
    x = torch.randn(3, 57, DIM, dtype=dtype)
    ref, scores, lam = cv_port(ours(dtype), 57)(x)
    a = ours(dtype, positions="round", ksvd_reduction="per-sample")
    out = a(x)
    assert (out - ref).abs().max() > 1e-3
    assert abs(a.ksvd_loss().item() - authors_ksvd([scores], [lam]).item()) > 1e-9


@pytest.mark.parametrize("init", ["authors", "per-head"])
def test_orthogonal_init(init):
    """authors: orthogonal_ over the flattened (H, n*s) rows; per-head: each (n, s) orthonormal."""
    torch.manual_seed(0)
    a = Attention(DIM, HEADS, "primal", low_rank=RANK, num_samples=SAMPLES, init=init)
    eye = torch.eye(RANK)
    for w in (a.w_e.detach(), a.w_r.detach()):
        flat = w.reshape(HEADS, -1)
        gram = torch.einsum("hps,hpt->hst", w, w)
        if init == "authors":
            torch.testing.assert_close(flat @ flat.T, torch.eye(HEADS), atol=1e-5, rtol=0)
            assert not torch.allclose(gram, eye.expand_as(gram), atol=1e-2)
            torch.testing.assert_close(gram.diagonal(dim1=1, dim2=2).sum(-1), torch.ones(HEADS), atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(gram, eye.expand_as(gram), atol=1e-5, rtol=0)
    if init == "authors":  # same RNG stream -> the very tensor of the authors' expression
        torch.manual_seed(3)
        ref = nn.init.orthogonal_(torch.Tensor(HEADS, SAMPLES, RANK))
        torch.manual_seed(3)
        torch.testing.assert_close(init_projection_(torch.empty(HEADS, SAMPLES, RANK)), ref, atol=0, rtol=0)


def test_authors_lra_code_is_not_padding_invariant():
    """Documents the difference: their LRA code samples W_e(X) over the padded length, so a
    sequence's outputs change with the batch's padding; ours do not."""
    dtype = torch.float64
    a = ours(dtype, seed=6)
    port = lra_port(a)
    x = torch.randn(1, 45, DIM, dtype=dtype)
    xp = torch.cat([x, torch.zeros(1, 19, DIM, dtype=dtype)], 1)
    mp = torch.cat([torch.ones(1, 45), torch.zeros(1, 19)], 1).to(dtype)
    alone, _, _ = port(x, torch.ones(1, 45, dtype=dtype))
    padded, _, _ = port(xp, mp)
    assert (padded[:, :45] - alone).abs().max() > 1e-2  # theirs moves
    kpm = mp.bool()
    torch.testing.assert_close(a(xp, key_padding_mask=kpm)[:, :45], a(x), atol=1e-12, rtol=0)
    assert math.isfinite(a.ksvd_loss().item())
