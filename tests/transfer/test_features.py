"""Feature cache (memmap round trip, resume), token reduction, train-only PCA."""

import numpy as np
import pytest

from dualattn.transfer.features import (FeatureSet, TokenPCA, extract_features, load_features, pool_patch_grid,
                                    pool_sequence, reduce_tokens)


class FakeBackbone:
    """Deterministic 'encoder': tokens are a fixed function of the input rows; counts calls."""

    name, kind, grid = "fake", "vision", (2, 2)

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def encode(self, batch):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        b = np.asarray(batch, dtype=np.float32)
        tokens = np.stack([b * (k + 1) for k in range(5)], axis=1)  # (B, 5, C)
        return tokens, np.ones(tokens.shape[:2], dtype=bool)


def _data(n=23, c=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, c)).astype(np.float32), rng.integers(0, 4, n)


def test_cache_round_trip_is_memmapped_and_equal(tmp_path):
    x, y = _data()
    direct = extract_features(FakeBackbone(), x, y, batch_size=5, progress=False)
    cached = extract_features(FakeBackbone(), x, y, cache=tmp_path / "c", batch_size=5, progress=False)
    assert isinstance(cached.tokens, np.memmap)
    np.testing.assert_array_equal(np.asarray(cached.tokens), direct.tokens)
    np.testing.assert_array_equal(cached.y, y)
    again = load_features(tmp_path / "c")
    assert again.grid == (2, 2) and again.tokens.shape == (23, 5, 3)
    # a second extraction reads the cache and never calls the backbone
    bb = FakeBackbone()
    extract_features(bb, x, y, cache=tmp_path / "c", batch_size=5, progress=False)
    assert bb.calls == 0


def test_interrupted_extraction_resumes(tmp_path):
    x, y = _data()
    with pytest.raises(KeyboardInterrupt):
        extract_features(FakeBackbone(fail_after=3), x, y, cache=tmp_path / "c", batch_size=5, progress=False)
    assert load_features(tmp_path / "c", missing_ok=True) is None
    bb = FakeBackbone()
    fs = extract_features(bb, x, y, cache=tmp_path / "c", batch_size=5, progress=False)
    # batches 0..1 were done before the interruption (call 1 is the shape probe of batch 0)
    assert bb.calls < 5
    np.testing.assert_array_equal(np.asarray(fs.tokens), FakeBackbone().encode(x)[0])


def test_cache_with_other_labels_is_rejected(tmp_path):
    x, y = _data()
    extract_features(FakeBackbone(), x, y, cache=tmp_path / "c", batch_size=8, progress=False)
    with pytest.raises(ValueError, match="different data"):
        extract_features(FakeBackbone(), x, (y + 1) % 4, cache=tmp_path / "c", progress=False)


def test_pool_patch_grid_shapes_and_means():
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((3, 1 + 16, 6)).astype(np.float32)
    out = pool_patch_grid(tokens, (4, 4), 2)
    assert out.shape == (3, 5, 6)
    np.testing.assert_array_equal(out[:, 0], tokens[:, 0])  # CLS kept
    grid = tokens[:, 1:].reshape(3, 4, 4, 6)
    np.testing.assert_allclose(out[:, 1], grid[:, :2, :2].mean((1, 2)), atol=1e-6)  # top-left quadrant
    np.testing.assert_allclose(out[:, 4], grid[:, 2:, 2:].mean((1, 2)), atol=1e-6)  # bottom-right
    assert pool_patch_grid(tokens, (4, 4), 4).shape == (3, 17, 6)
    assert pool_patch_grid(tokens, (4, 4), 1, keep_cls=False).shape == (3, 1, 6)
    with pytest.raises(ValueError, match="g:"):
        pool_patch_grid(tokens, (4, 4), 5)
    with pytest.raises(ValueError, match="tokens"):
        pool_patch_grid(tokens, (3, 3), 2)


def test_pool_sequence_respects_mask():
    tokens = np.arange(2 * 6 * 1, dtype=np.float32).reshape(2, 6, 1)
    mask = np.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], dtype=bool)
    out = pool_sequence(tokens, mask, 3)
    assert out.shape == (2, 3, 1)
    np.testing.assert_allclose(out[0, :, 0], [0, 1.5, 3.5])  # CLS, mean(1,2), mean(3,4); pad ignored
    np.testing.assert_allclose(out[1, :, 0], [6, 7, 8])  # two real tokens after CLS


def test_reduce_tokens_dispatch_and_errors():
    rng = np.random.default_rng(0)
    fs = FeatureSet(rng.standard_normal((4, 17, 8)).astype(np.float32), np.ones((4, 17), bool),
                    np.arange(4), grid=(4, 4))
    assert reduce_tokens(fs, 5).shape == (4, 5, 8)
    assert reduce_tokens(fs, 1).shape == (4, 1, 8)
    with pytest.raises(ValueError, match="1 \\+ g\\^2"):
        reduce_tokens(fs, 4)
    text = FeatureSet(fs.tokens, fs.mask, fs.y, grid=None)
    assert reduce_tokens(text, 4).shape == (4, 4, 8)
    with pytest.raises(ValueError, match="grid"):
        FeatureSet(fs.tokens, fs.mask, fs.y, grid=(3, 3))


def test_pca_is_fitted_on_train_only():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((50, 5, 12)) @ np.diag(np.linspace(3, 0.1, 12))
    test = rng.standard_normal((30, 5, 12)) * 10 + 7  # very different distribution
    pca = TokenPCA(4).fit(train)
    assert pca.n_fit_ == 50
    np.testing.assert_allclose(pca.mean_, train.reshape(-1, 12).mean(0))
    before = pca.components_.copy()
    z_test = pca.transform(test)
    np.testing.assert_array_equal(pca.components_, before)  # transform does not refit
    assert z_test.shape == (30, 5, 4)
    z_train = pca.transform(train)
    assert abs(float((z_train ** 2).mean()) - 1.0) < 1e-5  # unit mean square on train
    assert float((z_test ** 2).mean()) > 10  # test is not re-standardised
    both = TokenPCA(4).fit(np.concatenate([train, test]))
    assert not np.allclose(both.mean_, pca.mean_)
    np.testing.assert_allclose(np.abs(pca.components_ @ pca.components_.T), np.eye(4), atol=1e-8)
    with pytest.raises(ValueError, match="X"):
        pca.transform(train[..., :5])
    with pytest.raises(ValueError, match="d:"):
        TokenPCA(0)
