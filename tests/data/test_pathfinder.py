"""Pathfinder generator: connectivity semantics, balance, determinism, caching, output formats."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from dualattn.data import load_dataset
from dualattn.data import pathfinder as pf

SMALL = dict(n_train=48, n_val=16, n_test=16, chunk_size=20)


def _load(tmp_path, split="train", seed=0, **kw):
    return load_dataset("pathfinder", split, cache_dir=tmp_path, seed=seed, progress=False, **(SMALL | kw))


def test_label_means_connected():
    """With solid strokes, the circles share a bright 8-connected component iff label = 1."""
    cfg = pf.PathfinderConfig(gap_len=0.0, min_sep=4.0, n_distractors=1).validate()
    rng = np.random.default_rng(0)
    for i in range(30):
        label = i % 2
        img, circles = pf.sample_image(rng, label, cfg)
        assert img.shape == (32, 32) and 0 <= img.min() and img.max() <= 1
        comp, _ = ndimage.label(img > 0.25, structure=np.ones((3, 3)))
        ids = [comp[int(round(y)), int(round(x))] for x, y in circles]
        assert ids[0] > 0 and ids[1] > 0
        assert (ids[0] == ids[1]) == bool(label), f"sample {i}"


def test_endpoint_distance_is_not_a_shortcut():
    cfg = pf.PathfinderConfig().validate()
    rng = np.random.default_rng(1)
    lo, hi = cfg.endpoint_dist
    for label in (0, 1):
        for _ in range(10):
            _, c = pf.sample_image(rng, label, cfg)
            assert lo <= np.linalg.norm(c[0] - c[1]) <= hi


def test_generated_split_shapes_balance_and_determinism(tmp_path):
    tr = _load(tmp_path)
    assert tr.x.shape == (48, 1024, 1) and tr.mask.all() and tr.classes == ["disconnected", "connected"]
    assert abs(int(tr.y.sum()) - 24) <= 2  # balanced within each chunk
    v = tr.x[..., 0]
    assert abs(v.mean().item()) < 1e-4 and abs(v.std(unbiased=False).item() - 1) < 1e-3
    again = _load(tmp_path / "other")
    assert torch.equal(tr.x, again.x) and torch.equal(tr.y, again.y)
    assert not torch.equal(tr.x, _load(tmp_path / "s1", seed=1).x)
    te = _load(tmp_path, "test")
    assert len(te) == 16 and torch.equal(te.stats["mean"], tr.stats["mean"])
    # stroke pixel counts are similar in both classes (no trivial cue)
    raw = _load(tmp_path, normalize=False)
    bright = (raw.x[..., 0] > 0).sum(1).float()
    m0, m1 = bright[raw.y == 0].mean(), bright[raw.y == 1].mean()
    assert abs(m0 - m1) / m0 < 0.15


def test_tokens_and_cache(tmp_path, monkeypatch):
    tok = _load(tmp_path, as_tokens=True)
    raw = _load(tmp_path, normalize=False)
    assert tok.vocab_size == 256 and tok.x.dtype == torch.long and tok.x.shape == (48, 1024)
    torch.testing.assert_close(tok.x.float() / 255, raw.x[..., 0])
    monkeypatch.setattr(pf, "generate_chunk", lambda *a, **k: (_ for _ in ()).throw(AssertionError("regenerated")))
    assert torch.equal(_load(tmp_path, as_tokens=True).x, tok.x)


def test_small_preset_and_bad_config(tmp_path):
    with pytest.raises(ValueError, match="path_len"):
        _load(tmp_path, path_len=500.0)
    with pytest.raises(ValueError, match="endpoint_dist"):
        _load(tmp_path, endpoint_dist=(5, 2))
    with pytest.raises(TypeError, match="unknown option"):
        _load(tmp_path, wiggle=3)
    with pytest.raises(ValueError, match="could not place"):  # 6 long paths 4 px apart do not fit in 12x12
        _load(tmp_path, size=12, path_len=25.0, n_distractors=4, min_sep=4.0)
    with pytest.raises(ValueError, match="n_val"):
        _load(tmp_path, "val", n_val=0)
    assert pf.PRESETS["pathfinder-small"]["n_train"] < pf.PathfinderConfig().n_train
