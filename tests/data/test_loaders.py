"""make_dataloaders / trim_collate."""

import pytest
import torch

from dualattn.data import SequenceData, load_dataset, make_dataloaders, trim_collate


def _toy(n=10, t=12):
    lengths = torch.arange(n) % 5 + 1
    mask = torch.arange(t)[None] < lengths[:, None]
    x = torch.randn(n, t, 3) * mask[..., None]
    return SequenceData(x, mask, torch.arange(n) % 2, ["a", "b"])


def test_trim_collate_cuts_to_longest_in_batch():
    d = _toy()
    x, m, y = trim_collate([d[0], d[1], d[2]])  # lengths 1, 2, 3
    assert x.shape == (3, 3, 3) and m.shape == (3, 3) and y.tolist() == [0, 1, 0]
    assert torch.equal(m, d.mask[:3, :3]) and torch.equal(x, d.x[:3, :3])
    with pytest.raises(ValueError, match="batch"):
        trim_collate([])


def test_make_dataloaders_seeded_and_complete():
    d = _toy(20)
    tr, va, te = make_dataloaders(d, d, None, batch_size=4, seed=3)
    assert te is None
    order = lambda loader: torch.cat([b[2] * 100 + b[1].sum(1) for b in loader]).tolist()  # noqa: E731
    a = order(make_dataloaders(d, batch_size=4, seed=3)[0])
    b = order(make_dataloaders(d, batch_size=4, seed=3)[0])
    c = order(make_dataloaders(d, batch_size=4, seed=4)[0])
    assert a == b and a != c and sorted(a) == sorted(order(va))
    assert sum(len(bt[2]) for bt in va) == 20 and max(bt[0].shape[1] for bt in va) == 5
    with pytest.raises(ValueError, match="batch_size"):
        make_dataloaders(d, batch_size=0)
    with pytest.raises(TypeError, match="train"):
        make_dataloaders([1, 2], batch_size=2)


def test_loader_over_token_data(tmp_path):
    d = load_dataset("listops", "val", cache_dir=tmp_path, progress=False, n_train=20, n_val=30, n_test=5,
                     min_len=5, max_len=40, max_depth=3, max_args=3, chunk_size=64)
    (_, va, _) = make_dataloaders(None, d, None, batch_size=8)
    for x, m, y in va:
        assert x.dtype == torch.long and m[:, -1].any() and torch.equal(m, x != 0)
