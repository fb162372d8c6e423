"""swap_attention on our Encoder and on tiny randomly initialised transformers models (no downloads)."""

import pytest
import torch

from dualattn.nn import Encoder, HFAttention, swap_attention

transformers = pytest.importorskip("transformers")


def test_swap_our_encoder_softmax_identity_and_variants():
    enc = Encoder(16, 2, 4).eval()
    x = torch.randn(2, 8, 16)
    ref = enc(x)
    swap_attention(enc, "softmax")
    torch.testing.assert_close(enc(x), ref)
    swap_attention(enc, "sh", factors=[1, 1, 1, 1])
    torch.testing.assert_close(enc(x), ref, atol=1e-5, rtol=1e-5)
    swap_attention(enc, "bn+sh", factors=[1, 2, 2, 4])
    assert all(b.attn.variant == "bn+sh" for b in enc.blocks)
    assert not torch.allclose(enc(x), ref)
    swap_attention(enc, "primal", low_rank=3)
    assert torch.isfinite(enc(x)).all()


def _bert():
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32)
    return transformers.BertModel(cfg).eval()


@pytest.mark.parametrize("attn_impl", ["eager", "sdpa"])
def test_swap_bert_softmax_reproduces(attn_impl):
    model = _bert()
    model.config._attn_implementation = attn_impl
    ids = torch.randint(0, 50, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        swap_attention(model, "softmax")
        assert sum(isinstance(m, HFAttention) for m in model.modules()) == 2
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    valid = mask.bool()
    torch.testing.assert_close(out[valid], ref[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["bn", "sh", "bn+sh", "linear", "linear-bn", "sparse"])
def test_swap_bert_other_variants_run(variant):
    model = _bert()
    swap_attention(model, variant)
    ids = torch.randint(0, 50, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert model.encoder.layer[0].attention.self.attn.q_proj.weight.grad is not None


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_swap_vit_style_softmax_reproduces(kind):
    if kind == "vit":
        cfg = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64)
        model = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
    else:
        cfg = transformers.Dinov2Config(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                        num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2)
        model = transformers.Dinov2Model(cfg).eval()
    px = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = model(pixel_values=px).last_hidden_state
        swap_attention(model, "softmax")
        assert sum(isinstance(m, HFAttention) for m in model.modules()) == 2
        out = model(pixel_values=px).last_hidden_state
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        swap_attention(model, "sh")  # default factors for 4 heads: 1, 2, 4, 8
        assert torch.isfinite(model(pixel_values=px).last_hidden_state).all()


def test_swap_errors():
    with pytest.raises(ValueError, match="no attention"):
        swap_attention(torch.nn.Linear(3, 3), "bn")
    with pytest.raises(ValueError, match="variant"):
        swap_attention(Encoder(16, 1, 4), "nope")


def test_swapped_bert_still_reports_attentions():
    model = _bert()
    ids = torch.randint(0, 50, (2, 9))
    swap_attention(model, "bn+sh")
    out = model(input_ids=ids, output_attentions=True)
    assert out.attentions is not None and len(out.attentions) == 2
    assert out.attentions[0].shape == (2, 4, 9, 9)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 9))
    assert model(input_ids=ids).attentions is None
