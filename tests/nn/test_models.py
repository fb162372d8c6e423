import pytest
import torch

from dualattn.nn.models import SequenceClassifier, ViT, build_model
from dualattn.train.config import ModelConfig

VARIANTS = ["softmax", "linear", "bn", "sh", "bn+sh"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_sequence_classifier_shapes_and_attention(variant):
    m = SequenceClassifier(3, max_len=10, in_features=4, dim=16, depth=2, num_heads=4, variant=variant, dropout=0.0)
    x = torch.randn(2, 7, 4)
    mask = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    logits, weights = m(x, mask, return_attention=True)
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    assert len(weights) == 2 and all(w.shape == (2, 4, 7, 7) for w in weights)
    assert torch.equal(m(x, mask).detach(), logits.detach()) or torch.allclose(m(x, mask), logits, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_content_does_not_change_logits(variant):
    torch.manual_seed(0)
    m = SequenceClassifier(3, max_len=8, in_features=4, dim=16, depth=2, num_heads=2, variant=variant).eval()
    x = torch.randn(1, 8, 4)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    y = x.clone()
    y[:, 5:] = 100 * torch.randn(1, 3, 4)
    torch.testing.assert_close(m(x, mask), m(y, mask), atol=1e-5, rtol=1e-5)
    y[:, 5:] = float("nan")  # NaN-poisoned padding must not reach the pooled vector either
    torch.testing.assert_close(m(x, mask), m(y, mask), atol=1e-5, rtol=1e-5)


def test_token_input_and_errors():
    m = SequenceClassifier(2, max_len=6, vocab_size=10, dim=8, depth=1, num_heads=2, embed_dim=4)
    assert m(torch.randint(0, 10, (3, 6))).shape == (3, 2)
    with pytest.raises(TypeError, match="token ids"):
        m(torch.randn(3, 6))
    with pytest.raises(ValueError, match="max_len"):
        m(torch.randint(0, 10, (3, 7)))
    with pytest.raises(ValueError, match="exactly one"):
        SequenceClassifier(2, max_len=6, vocab_size=10, in_features=3)
    c = SequenceClassifier(2, max_len=6, in_features=3, dim=8, depth=1, num_heads=2)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        c(torch.randn(2, 6, 4))
    with pytest.raises(ValueError, match="mask"):
        c(torch.randn(2, 6, 3), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one real"):
        c(torch.randn(2, 6, 3), torch.zeros(2, 6, dtype=torch.bool))


def test_vit_images_and_pixel_sequences_agree():
    torch.manual_seed(0)
    m = ViT(10, image_size=8, patch_size=2, channels=1, dim=16, depth=2, num_heads=4, dropout=0.0).eval()
    img = torch.randn(3, 1, 8, 8)
    seq = img.reshape(3, 1, 64).transpose(1, 2)  # (B, 64, 1) row-major pixels
    logits, w = m(img, return_attention=True)
    assert logits.shape == (3, 10) and len(w) == 2 and w[0].shape == (3, 4, 17, 17)
    torch.testing.assert_close(m(seq), logits)
    with pytest.raises(ValueError, match="divisible"):
        ViT(10, image_size=7, patch_size=2)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        m(torch.randn(3, 1, 6, 6))


def test_build_model_from_config():
    cfg = ModelConfig(dim=16, num_heads=2, mlp_hidden=64, depth=1)
    m = build_model(cfg, num_classes=4, max_len=12, in_features=3, vocab_size=None)
    assert isinstance(m, SequenceClassifier) and m.encoder.blocks[0].mlp[0].out_features == 64
    v = build_model(ModelConfig(kind="vit", dim=16, num_heads=2), num_classes=10, max_len=64, in_features=1,
                    vocab_size=None)
    assert isinstance(v, ViT) and v.image_size == 8
