"""SequenceData validation, registry errors, splits and normalisation helpers."""

import numpy as np
import pytest
import torch

from dualattn.data import SequenceData, available_datasets, load_dataset, resolve_cache_dir
from dualattn.data.base import apply_stats, channel_stats, params_hash, stratified_split


def _cont(n=4, t=5, c=2):
    x = torch.randn(n, t, c)
    mask = torch.ones(n, t, dtype=torch.bool)
    return x, mask, torch.zeros(n, dtype=torch.long)


def test_sequence_data_getitem_and_props():
    x, m, y = _cont()
    m[0, 3:] = False
    d = SequenceData(x, m, y, ["a", "b"], name="toy", split="train")
    xi, mi, yi = d[0]
    assert xi.shape == (5, 2) and mi.dtype == torch.bool and yi.dtype == torch.long
    assert len(d) == 4 and d.seq_len == 5 and d.num_channels == 2 and d.num_classes == 2
    assert d.lengths.tolist() == [3, 5, 5, 5]
    sub = d.subset([1, 2], split="val")
    assert len(sub) == 2 and sub.split == "val" and torch.equal(sub.x, x[1:3])


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(x=torch.randn(4, 5)), ValueError, "x"),
        (dict(x=torch.full((4, 5, 2), float("nan"))), ValueError, "NaN"),
        (dict(mask=torch.ones(4, 6, dtype=torch.bool)), ValueError, "mask"),
        (dict(mask=torch.ones(4, 5)), TypeError, "mask"),
        (dict(y=torch.tensor([0, 1, 2, 0])), ValueError, "y"),
        (dict(y=torch.zeros(3, dtype=torch.long)), ValueError, "y"),
        (dict(y=torch.zeros(4)), TypeError, "y"),
    ],
)
def test_sequence_data_rejects_bad_input(kwargs, exc, word):
    x, m, y = _cont()
    args = dict(x=x, mask=m, y=y) | kwargs
    with pytest.raises(exc, match=word):
        SequenceData(args["x"], args["mask"], args["y"], ["a", "b"])


def test_token_data_checks_vocab():
    ids = torch.tensor([[1, 2, 0], [3, 0, 0]])
    m = ids != 0
    d = SequenceData(ids, m, torch.tensor([0, 1]), ["a", "b"], vocab_size=4)
    assert d.is_tokens and d.num_channels is None
    with pytest.raises(ValueError, match="vocab_size|token ids"):
        SequenceData(ids, m, torch.tensor([0, 1]), ["a", "b"], vocab_size=3)
    with pytest.raises(TypeError, match="x"):
        SequenceData(ids.float(), m, torch.tensor([0, 1]), ["a", "b"], vocab_size=4)


def test_load_dataset_errors():
    with pytest.raises(ValueError, match="split"):
        load_dataset("listops-small", "dev")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("NoSuchThing", "train")
    assert {"JapaneseVowels", "BasicMotions", "listops"} <= set(available_datasets())


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALATTN_CACHE", str(tmp_path / "c"))
    assert resolve_cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    assert resolve_cache_dir(tmp_path / "d") == tmp_path / "d"
    assert params_hash({"a": 1, "b": 2}) == params_hash({"b": 2, "a": 1}) != params_hash({"a": 2, "b": 2})


def test_stratified_split_is_seeded_and_stratified():
    y = np.repeat(np.arange(3), [10, 20, 5])
    keep, held = stratified_split(y, 0.2, seed=1)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(y)
    assert np.bincount(y[held], minlength=3).tolist() == [2, 4, 1]
    k2, h2 = stratified_split(y, 0.2, seed=1)
    assert np.array_equal(held, h2)
    assert not np.array_equal(held, stratified_split(y, 0.2, seed=2)[1])
    # a singleton class stays in train
    keep, held = stratified_split(np.array([0, 0, 0, 1]), 0.5, seed=0)
    assert 3 in keep


def test_channel_stats_ignore_padding_and_nan():
    x = np.zeros((2, 3, 1), np.float32)
    x[0, :, 0] = [1, 3, 100]  # 100 is padding
    x[1, :, 0] = [np.nan, 5, 7]
    m = np.array([[1, 1, 0], [1, 1, 1]], bool)
    st = channel_stats(x, m)
    np.testing.assert_allclose(st["mean"], [4.0])
    np.testing.assert_allclose(st["std"], [np.std([1, 3, 5, 7])], rtol=1e-6)
    z = apply_stats(np.nan_to_num(x), m, st)
    assert z[0, 2, 0] == 0.0
