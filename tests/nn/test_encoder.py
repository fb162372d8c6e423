"""dualattn.nn.Encoder / EncoderBlock."""

import pytest
import torch

from dualattn.nn import Encoder, EncoderBlock


@pytest.mark.parametrize("variant", ["softmax", "bn+sh", "linear", ["softmax", "sh"]])
def test_encoder_shapes_weights_and_padding(variant):
    enc = Encoder(16, 2, 4, variant=variant, factors=[1, 2, 2, 4]) if variant != "softmax" and variant != "linear" \
        else Encoder(16, 2, 4, variant=variant)
    enc.eval()
    x = torch.randn(2, 10, 16)
    kpm = torch.ones(2, 10, dtype=torch.bool)
    kpm[1, 6:] = False
    y, ws = enc(x, key_padding_mask=kpm, need_weights=True)
    assert y.shape == (2, 10, 16) and len(ws) == 2 and all(w.shape == (2, 4, 10, 10) for w in ws)
    torch.testing.assert_close(enc(x, key_padding_mask=kpm), y, atol=1e-5, rtol=1e-5)
    x2 = x.clone()
    x2[1, 6:] = 1e4
    torch.testing.assert_close(enc(x2, key_padding_mask=kpm)[kpm], y[kpm], atol=1e-5, rtol=1e-5)


def test_encoder_causal_and_training_step():
    enc = Encoder(16, 2, 4, variant="bn", dropout=0.1, attn_drop=0.1)
    x = torch.randn(2, 8, 16)
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    loss = enc(x, is_causal=True).pow(2).mean()
    loss.backward()
    opt.step()
    enc.eval()
    a = enc(x, is_causal=True)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(2, 3, 16)
    torch.testing.assert_close(enc(x2, is_causal=True)[:, :5], a[:, :5])


def test_block_is_prenorm_residual():
    blk = EncoderBlock(16, 4).eval()
    with torch.no_grad():
        for p in list(blk.attn.out_proj.parameters()) + list(blk.mlp[-2].parameters()):
            p.zero_()
    x = torch.randn(1, 5, 16)
    torch.testing.assert_close(blk(x), x)


def test_encoder_errors():
    with pytest.raises(ValueError, match="depth"):
        Encoder(16, 0, 4)
    with pytest.raises(ValueError, match="variant"):
        Encoder(16, 2, 4, variant=["softmax"])
    with pytest.raises(TypeError, match="not accepted"):
        Encoder(16, 2, 4, variant=["softmax", "bn"], factors=[1, 1, 1, 1])
