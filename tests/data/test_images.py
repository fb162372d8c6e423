"""digits-pixels: shapes, disjoint stratified splits, fixed test set, tokens."""

import numpy as np
import torch
import pytest

from dualattn.data import load_dataset


def test_digits_splits(tmp_path):
    d = {s: load_dataset("digits-pixels", s) for s in ("train", "val", "test")}
    assert sum(len(v) for v in d.values()) == 1797
    assert d["test"].x.shape[1:] == (64, 1) and d["train"].classes == [str(i) for i in range(10)]
    assert len(d["test"]) == pytest.approx(0.2 * 1797, abs=10)
    rows = {s: {tuple(r.flatten().tolist()) for r in v.x} for s, v in d.items()}
    # no image shared between splits (digits has a few exact duplicates, allow <= 3)
    assert len(rows["train"] & rows["test"]) <= 3
    # stratified: every class in every split
    for v in d.values():
        assert (v.class_counts() > 0).all()
    v = d["train"].x[..., 0]
    assert abs(v.mean().item()) < 1e-4 and abs(v.std(unbiased=False).item() - 1) < 1e-3


def test_digits_seed_changes_val_not_test():
    a = load_dataset("digits-pixels", "test", seed=0, normalize=False)
    b = load_dataset("digits-pixels", "test", seed=5, normalize=False)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)  # same test images (stats may differ)
    va, vb = load_dataset("digits-pixels", "val", seed=0), load_dataset("digits-pixels", "val", seed=5)
    assert not torch.equal(va.x, vb.x)


def test_digits_tokens_match_images():
    from sklearn.datasets import load_digits

    tok = load_dataset("digits-pixels", "train", as_tokens=True)
    assert tok.vocab_size == 17 and tok.x.dtype == torch.long and tok.x.max() <= 16
    raw = load_dataset("digits-pixels", "train", normalize=False)
    torch.testing.assert_close(tok.x.float() / 16, raw.x[..., 0])
    images = load_digits().images.reshape(-1, 64)
    # the first train row is a real digits image with its real label
    hit = np.flatnonzero((images == tok.x[0].numpy()).all(1))
    assert len(hit) >= 1 and load_digits().target[hit[0]] == tok.y[0]
    with pytest.raises(ValueError, match="root"):
        load_dataset("digits-pixels", "train", root="/nowhere")
