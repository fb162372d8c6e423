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
    # BERT's attention dropout (0.1) cannot run on linear's O(N) path: drop it explicitly
    swap_attention(model, variant, **({"attn_drop": 0.0} if variant.startswith("linear") else {}))
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


def _bert_with_attn_dropout():
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, attention_probs_dropout_prob=0.1)
    return transformers.BertModel(cfg).train()


def _swapped(model):
    return [m for m in model.modules() if isinstance(m, HFAttention)]


def test_swap_attn_drop_override_and_default():
    model = _bert_with_attn_dropout()
    swap_attention(model, "bn")  # default: keep the model's own attention dropout
    assert [w.attn.attn_drop for w in _swapped(model)] == [0.1, 0.1]
    model = _bert_with_attn_dropout()
    swap_attention(model, "softmax", attn_drop=0.0)  # was "TypeError: multiple values for attn_drop"
    assert [w.attn.attn_drop for w in _swapped(model)] == [0.0, 0.0]
    h = torch.randn(2, 8, 32)

    def train_vs_eval(wrapper):
        wrapper.train()
        a = wrapper(h)[0]
        wrapper.eval()
        return a, wrapper(h)[0]

    torch.testing.assert_close(*train_vs_eval(_swapped(model)[0]))  # no attention dropout left
    kept = _bert_with_attn_dropout()
    swap_attention(kept, "softmax")
    a, b = train_vs_eval(_swapped(kept)[0])
    assert not torch.allclose(a, b)  # the kept p=0.1 does drop weights in training
    enc = Encoder(16, 2, 4, attn_drop=0.2)
    swap_attention(enc, "sh", attn_drop=0.05, factors=[1, 1, 2, 2])
    assert all(b.attn.attn_drop == 0.05 and b.attn.variant == "sh" for b in enc.blocks)
    with pytest.raises(ValueError, match="attn_drop"):
        swap_attention(enc, "bn", attn_drop=1.5)


@pytest.mark.parametrize("variant", ["linear", "linear-bn"])
def test_swap_without_fast_dropout_fails_at_swap_time(variant):
    model = _bert_with_attn_dropout()
    with pytest.raises(ValueError, match=r"encoder\.layer\.0\.attention\.self.*p=0\.1.*attn_drop=0\.0"):
        swap_attention(model, variant)
    assert not _swapped(model)  # nothing was replaced
    swap_attention(model, variant, attn_drop=0.0)
    assert len(_swapped(model)) == 2
    ids = torch.randint(0, 50, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state  # train mode: no error at forward
    out.sum().backward()
    assert torch.isfinite(model.encoder.layer[0].attention.self.attn.q_proj.weight.grad).all()


def test_swap_our_encoder_with_dropout_to_primal_fails_at_swap_time():
    enc = Encoder(16, 2, 4, attn_drop=0.1)
    with pytest.raises(ValueError, match="primal.*attn_drop=0.0"):
        swap_attention(enc, "primal", low_rank=2)
    assert all(b.attn.variant == "softmax" for b in enc.blocks)
    swap_attention(enc, "primal", attn_drop=0.0, low_rank=2)
    assert torch.isfinite(enc.train()(torch.randn(2, 6, 16))).all()


def test_swap_bad_option_leaves_model_unchanged():
    model = _bert_with_attn_dropout()
    with pytest.raises(ValueError, match="eps"):
        swap_attention(model, "bn", eps=0.0)
    with pytest.raises(TypeError, match="unknown option"):
        swap_attention(model, "bn", window=3)
    assert not _swapped(model)
