"""Primal-Attention: padding invariance (length, not just content), NaN-poisoned padding, float16,
sample positions and option validation."""

import pytest
import torch

import dualattn.functional as A
from dualattn.functional.primal import primal_projections, sample_positions, unit_rows
from dualattn.nn import Attention, ksvd_regularizer
from dualattn.nn.models import SequenceClassifier


def layer(dtype=torch.float64, **opts):
    torch.manual_seed(0)
    return Attention(16, 4, "primal", qkv_bias=True, low_rank=2, num_samples=6, **opts).to(dtype).eval()


def pad_to(seqs, N, fill=0.0, left=False):
    """Stack (L_b, C) sequences into (B, N, C) with padding ``fill``; returns x and key_padding_mask."""
    B, C = len(seqs), seqs[0].shape[-1]
    x = torch.full((B, N, C), fill, dtype=seqs[0].dtype)
    kpm = torch.zeros(B, N, dtype=torch.bool)
    for b, s in enumerate(seqs):
        sl = slice(N - len(s), N) if left else slice(0, len(s))
        x[b, sl], kpm[b, sl] = s, True
    return x, kpm


def real(out, kpm, b):
    return out[b][kpm[b]]


# ----------------------------------------------------------------------------- sample positions
def test_positions_truncate_like_torch_linspace_int():
    pos, valid = sample_positions([57], 20)
    assert pos[0].tolist() == torch.linspace(0, 56, 20, dtype=int).tolist()
    assert pos[0, :4].tolist() == [0, 2, 5, 8] and valid.all()
    rnd, _ = sample_positions([57], 20, "round")
    assert rnd[0, :4].tolist() == [0, 3, 6, 9]
    assert (pos != rnd).sum() == 9  # the count: 9 of 20 positions differ at N=57


def test_positions_short_and_empty_sequences():
    pos, valid = sample_positions([3, 0, 6], 6)
    assert pos[0, :3].tolist() == [0, 1, 2] and valid[0].tolist() == [True] * 3 + [False] * 3
    assert not valid[1].any()
    assert pos[2].tolist() == list(range(6)) and valid[2].all()
    rnd, rvalid = sample_positions([3], 6, "round")
    assert rnd[0].tolist() == [0, 0, 1, 1, 2, 2] and rvalid.all()
    with pytest.raises(ValueError, match="mode"):
        sample_positions([3], 6, "floor")
    with pytest.raises(ValueError, match="`n`"):
        sample_positions([3], 0)


def test_projections_use_real_tokens_whatever_the_mask_layout():
    """Left padding or a hole in the mask: W_e(X) equals that of the compacted sequence."""
    torch.manual_seed(1)
    we, wr = torch.randn(4, 6, 2, dtype=torch.float64), torch.randn(4, 6, 2, dtype=torch.float64)
    s = torch.randn(9, 16, dtype=torch.float64)
    ref = primal_projections(s[None], we, wr, 4)
    x, kpm = pad_to([s], 14, fill=float("nan"), left=True)
    for got in (primal_projections(x, we, wr, 4, kpm),):
        torch.testing.assert_close(got, ref, atol=1e-13, rtol=0)
    hole = torch.full((1, 11, 16), float("nan"), dtype=torch.float64)
    keep = torch.ones(1, 11, dtype=torch.bool)
    keep[0, [2, 7]] = False
    hole[0, keep[0]] = s
    torch.testing.assert_close(primal_projections(hole, we, wr, 4, keep), ref, atol=1e-13, rtol=0)
    with pytest.raises(ValueError, match="key_padding_mask"):
        primal_projections(x, we, wr, 4, kpm.float())
    with pytest.raises(ValueError, match="w_r"):
        primal_projections(x, we, wr[:, :5], 4, kpm)


# ----------------------------------------------------------------------------- padding invariance
@pytest.mark.parametrize("positions", ["linspace-trunc", "round"])
@pytest.mark.parametrize("reduction", ["batch-mean-squared", "per-sample"])
def test_padded_length_changes_nothing(positions, reduction):
    """Same sequences padded to 12 vs 20 (and each alone): same outputs, same KSVD loss."""
    a = layer(positions=positions, ksvd_reduction=reduction)
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randn(L, 16, dtype=torch.float64, generator=g) for L in (5, 9, 12)]
    results = []
    for N, fill in ((12, 0.0), (20, 7.0), (20, float("nan"))):
        x, kpm = pad_to(seqs, N, fill)
        out = a(x, key_padding_mask=kpm)
        results.append(([real(out, kpm, b) for b in range(3)], a.ksvd_loss()))
    for outs, loss in results[1:]:
        for o, o0 in zip(outs, results[0][0]):
            torch.testing.assert_close(o, o0, atol=1e-12, rtol=0)
        torch.testing.assert_close(loss, results[0][1], atol=1e-12, rtol=0)
    for b, s in enumerate(seqs):  # alone, unpadded; and alone padded to 20
        torch.testing.assert_close(a(s[None])[0], results[0][0][b], atol=1e-12, rtol=0)
        loss_alone = a.ksvd_loss()
        x, kpm = pad_to([s], 20)
        a(x, key_padding_mask=kpm)
        torch.testing.assert_close(a.ksvd_loss(), loss_alone, atol=1e-12, rtol=0)


def test_classifier_logits_do_not_depend_on_batch_padding():
    """The issue's symptom: a primal classifier's logits changed with the batch's padded length."""
    torch.manual_seed(0)
    model = SequenceClassifier(3, max_len=32, in_features=5, dim=16, num_heads=4, depth=2, dropout=0.0,
                               variant="primal", variant_options={"low_rank": 2}).double().eval()
    s = torch.randn(7, 5, dtype=torch.float64)
    alone = model(s[None])
    for N in (12, 20, 32):
        x, kpm = pad_to([s, torch.randn(N, 5, dtype=torch.float64)], N)
        torch.testing.assert_close(model(x, kpm)[:1], alone, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- NaN-poisoned padding
def test_functional_nan_padding_outputs_and_gradients():
    """NaN in padded q/k: real outputs and all gradients finite and equal to the clean ones."""
    torch.manual_seed(3)
    q0, k0 = torch.randn(2, 4, 13, 8, dtype=torch.float64), torch.randn(2, 4, 13, 8, dtype=torch.float64)
    we = torch.randn(2, 4, 8, 3, dtype=torch.float64, requires_grad=True)
    wr = torch.randn(2, 4, 8, 3, dtype=torch.float64, requires_grad=True)
    kpm = torch.ones(2, 13, dtype=torch.bool)
    kpm[0, 10:], kpm[1, 1], kpm[1, 8:] = False, False, False
    pad = ~kpm[:, None, :, None]
    res = []
    for poison in (0.0, float("nan"), float("inf")):
        q = q0.masked_fill(pad, poison).requires_grad_(True)
        k = k0.masked_fill(pad, poison).requires_grad_(True)
        out, w = A.primal_attention(q, k, w_e=we, w_r=wr, key_padding_mask=kpm, need_weights=True)
        assert (out.masked_select(pad) == 0).all() and torch.isfinite(w).all()
        (out.sum() + w.sum()).backward()
        res.append((out.detach(), q.grad, k.grad, we.grad.clone(), wr.grad.clone()))
        we.grad, wr.grad = None, None
    for got in res[1:]:
        for g, ref in zip(got, res[0]):
            assert torch.isfinite(g).all()
            torch.testing.assert_close(g, ref, atol=1e-12, rtol=0)
    assert (res[0][1].masked_select(pad) == 0).all()  # padded q/k get exactly zero gradient


def test_module_nan_padding_outputs_loss_and_gradients():
    a = layer()
    x, kpm = pad_to([torch.randn(9, 16, dtype=torch.float64), torch.randn(4, 16, dtype=torch.float64)], 12)
    grads = []
    for poison in (0.0, float("nan")):
        xp = x.masked_fill(~kpm[..., None], poison).requires_grad_(True)
        out = a(xp, key_padding_mask=kpm)
        loss = out[kpm].sum() + ksvd_regularizer(a)
        a.zero_grad()
        loss.backward()
        grads.append([out[kpm].detach(), loss.detach(), xp.grad] + [p.grad.clone() for p in a.parameters()])
    for g, ref in zip(grads[1], grads[0]):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, ref, atol=1e-12, rtol=0)


def test_ksvd_loss_ignores_nan_at_masked_positions():
    e, r = torch.randn(2, 2, 5, 3), torch.randn(2, 2, 5, 3)
    lam, w = torch.rand(2, 3), torch.randn(2, 6, 3)
    m = torch.tensor([[True] * 5, [True, True, True, False, False]])
    clean = A.ksvd_loss(e, r, lam, w, w, mask=m)
    e2, r2 = e.clone(), r.clone()
    e2[1, :, 3:], r2[1, :, 3:] = float("nan"), float("inf")
    torch.testing.assert_close(A.ksvd_loss(e2, r2, lam, w, w, mask=m), clean)


# ----------------------------------------------------------------------------- float16
def test_float16_no_nan_rows_at_padded_queries():
    torch.manual_seed(0)
    a = Attention(16, 4, "primal", low_rank=3)
    x, kpm = pad_to([torch.randn(8, 16), torch.randn(12, 16)], 12)
    ref = a(x, key_padding_mask=kpm)
    out = a.half()(x.half(), key_padding_mask=kpm)
    assert torch.isfinite(out).all()
    assert (out[kpm].float() - ref[kpm]).abs().max() < 5e-2
    q = torch.zeros(1, 1, 3, 4, dtype=torch.float16)  # a zero row also stays finite (phi(0) = 0)
    assert torch.isfinite(unit_rows(q)).all() and (unit_rows(q) == 0).all()


def test_unit_rows_matches_f_normalize_in_fp32():
    x = torch.randn(3, 5, 7)
    torch.testing.assert_close(unit_rows(x), torch.nn.functional.normalize(x, dim=-1), atol=0, rtol=0)


# ----------------------------------------------------------------------------- options
def test_primal_options_validated_at_construction():
    for key, bad in (("positions", "floor"), ("ksvd_reduction", "sum"), ("init", "xavier")):
        with pytest.raises(ValueError, match=key):
            Attention(16, 4, "primal", **{key: bad})
    with pytest.raises(ValueError, match="reduction"):
        A.ksvd_loss(torch.ones(1, 1, 2, 1), torch.ones(1, 1, 2, 1), torch.ones(1, 1), torch.ones(1, 2, 1),
                    torch.ones(1, 2, 1), reduction="sum")


def test_reductions_differ_only_across_samples():
    """batch-mean-squared squares the batch mean; per-sample averages squares (equal for B = 1)."""
    torch.manual_seed(0)
    e, r = torch.randn(3, 2, 5, 3), torch.randn(3, 2, 5, 3)
    lam, w = torch.rand(2, 3), torch.randn(2, 6, 3) / 3
    bms = A.ksvd_loss(e, r, lam, w, w)
    ps = A.ksvd_loss(e, r, lam, w, w, reduction="per-sample")
    assert bms < ps  # Jensen: (mean x)^2 <= mean x^2, strict for distinct samples
    torch.testing.assert_close(A.ksvd_loss(e[:1], r[:1], lam, w, w), A.ksvd_loss(e[:1], r[:1], lam, w, w, reduction="per-sample"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_padding(dtype):
    """On CUDA in fp16/bf16: finite everywhere, padding-invariant, close to the float64 CPU result."""
    torch.manual_seed(0)
    a = Attention(64, 4, "primal", low_rank=4)
    seqs = [torch.randn(L, 64) for L in (100, 37)]
    x, kpm = pad_to(seqs, 128, fill=float("nan"))
    ref = a.double()(x.double(), key_padding_mask=kpm)
    a = a.to("cuda", dtype)
    out = a(x.to("cuda", dtype), key_padding_mask=kpm.cuda())
    assert torch.isfinite(out).all()
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    assert (out.double().cpu()[kpm] - ref[kpm]).abs().max() < tol
    alone = a(seqs[1][None].to("cuda", dtype))
    assert (alone[0].float() - out[1][kpm[1].cuda()].float()).abs().max() < tol
