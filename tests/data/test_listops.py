"""ListOps generator: determinism, validity of labels, length limits, caching/resume."""

import numpy as np
import pytest
import torch

from dualattn.data import listops as lo
from dualattn.data import load_dataset

class _Interrupted(Exception):
    pass


SMALL = dict(n_train=300, n_val=50, n_test=50, min_len=10, max_len=60, max_depth=4, max_args=4, chunk_size=100)


def _load(tmp_path, split="train", seed=0, **kw):
    return load_dataset("listops", split, cache_dir=tmp_path, seed=seed, progress=False, **(SMALL | kw))


def test_shapes_labels_and_lengths(tmp_path):
    d = _load(tmp_path)
    assert d.x.shape == (300, 60) and d.x.dtype == torch.long and d.vocab_size == lo.VOCAB_SIZE
    assert d.classes == [str(i) for i in range(10)]
    assert torch.equal(d.mask, d.x != lo.PAD)
    assert d.lengths.min() >= 10 and d.lengths.max() <= 60
    for i in range(len(d)):
        ids = d.x[i, d.mask[i]].numpy()
        assert lo.evaluate_ids(ids) == d.y[i]
    # more than one operator and class appear
    assert len(set(d.y.tolist())) >= 5
    ops = {lo.VOCAB[t] for t in d.x.unique().tolist()}
    assert set(lo.OPERATORS) <= ops


def test_deterministic_and_seeded(tmp_path):
    a = _load(tmp_path / "a", seed=3)
    b = _load(tmp_path / "b", seed=3)
    c = _load(tmp_path / "c", seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


def test_splits_are_disjoint(tmp_path):
    rows = {}
    for split in ("train", "val", "test"):
        d = _load(tmp_path, split)
        assert len(d) == SMALL[f"n_{split}"]
        rows[split] = {tuple(r[m].tolist()) for r, m in zip(d.x, d.mask)}
        assert len(rows[split]) == len(d)  # no duplicates inside a split
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


def test_cache_reused_and_resume(tmp_path, monkeypatch):
    first = _load(tmp_path)
    assert len(list((tmp_path / "listops").glob("*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(lo, "generate_chunk", boom)
    assert torch.equal(_load(tmp_path).x, first.x)
    monkeypatch.undo()

    # resume: a run interrupted after one chunk continues from the cached chunk
    cfg = lo.ListOpsConfig(**SMALL)
    calls = []
    real = lo.generate_chunk
    interrupt = [True]

    def flaky(cfg_, seed, chunk, n):
        calls.append(chunk)
        if chunk == 1 and interrupt[0]:
            raise _Interrupted
        return real(cfg_, seed, chunk, n)

    monkeypatch.setattr(lo, "generate_chunk", flaky)
    with pytest.raises(_Interrupted):
        lo.generate_listops(cfg, seed=0, cache_dir=tmp_path / "r", progress=False)
    assert calls == [0, 1]
    calls.clear()
    interrupt[0] = False
    out = lo.generate_listops(cfg, seed=0, cache_dir=tmp_path / "r", progress=False)
    assert 0 not in calls  # chunk 0 came from disk
    np.testing.assert_array_equal(out["tokens"][:300], first.x.numpy())


def test_operator_semantics_and_parens():
    assert lo.evaluate("[MED", [1, 2, 7, 9]) == 4  # int(median) = floor(4.5)
    assert lo.evaluate("[SM", [9, 8, 5]) == 2
    assert lo.evaluate_ids(lo.encode("[MAX 2 [MIN 4 7 ] 0 ]")) == 4
    text = "( ( ( [SM 3 ) ( ( [MED 1 ) 5 ) ] ) ) ] )"
    assert lo.evaluate_ids(lo.encode(text)) == 6
    assert lo.decode(lo.encode(text)) == "[SM 3 [MED 1 5 ] ]"
    with pytest.raises(ValueError, match="unknown ListOps token"):
        lo.encode("[FOO 1 2 ]")
    with pytest.raises(ValueError, match="unbalanced"):
        lo.evaluate_ids(lo.encode("[MAX 1 2"))


def test_keep_parens(tmp_path):
    d = _load(tmp_path, keep_parens=True, max_len=120, min_len=20)
    assert (d.x == lo.TOKEN_ID["("]).any()
    for i in range(20):
        assert lo.evaluate_ids(d.x[i, d.mask[i]].numpy()) == d.y[i]


@pytest.mark.parametrize(
    "kw, exc, word",
    [
        (dict(min_len=50, max_len=40), ValueError, "min_len"),
        (dict(max_args=1), ValueError, "max_args"),
        (dict(max_depth=1), ValueError, "max_depth"),
        (dict(n_train=2.5), TypeError, "n_train"),
        (dict(colour="red"), TypeError, "unknown option"),
    ],
)
def test_bad_config(tmp_path, kw, exc, word):
    with pytest.raises(exc, match=word):
        _load(tmp_path, **kw)


def test_small_preset_label_balance(tmp_path):
    d = load_dataset("listops-small", "val", cache_dir=tmp_path, progress=False)
    assert d.seq_len == lo.PRESETS["listops-small"]["max_len"]
    counts = d.class_counts().float()
    assert counts.max() / counts.sum() < 0.3  # no class dominates


def test_too_few_distinct_expressions(tmp_path):
    # "[OP a b ]" is the only shape with 4 tokens at depth 2: 4 * 10 * 10 = 400 distinct expressions
    with pytest.raises(ValueError, match="distinct expressions"):
        _load(tmp_path, n_train=450, n_val=0, n_test=0, min_len=4, max_len=4, max_depth=2, max_args=2)
    assert not list((tmp_path / "listops").glob("*.chunks"))
