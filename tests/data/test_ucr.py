"""UCR sets shipped with aeon: offline loading and the patching adaptation."""

import pytest
import torch

from dualattn.data import SequenceData, load_dataset
from dualattn.data.ucr import AEON_UCR, available_offline, patch_length, patch_series


def test_patch_series_groups_steps_and_masks():
    x = torch.arange(2 * 7, dtype=torch.float32).reshape(2, 7, 1)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    ds = SequenceData(x * mask[..., None], mask, torch.tensor([0, 1]), ["a", "b"])
    p = patch_series(ds, 3)
    assert p.x.shape == (2, 3, 3)
    assert p.x[0, 1].tolist() == [3.0, 4.0, 5.0] and p.x[0, 2].tolist() == [6.0, 0.0, 0.0]
    assert p.mask.tolist() == [[True, True, True], [True, True, False]]
    assert p.x[1, 1].tolist() == [10.0, 0.0, 0.0]  # padded steps are zero inside a real patch
    assert patch_series(ds, 1) is ds


def test_patch_length_rules():
    assert patch_length(1460, max_tokens=64) == 23 and patch_length(24, max_tokens=64) == 1
    assert patch_length(100, patch_len=4) == 4 and patch_length(100) == 1
    with pytest.raises(ValueError, match="at most one"):
        patch_length(100, patch_len=2, max_tokens=10)
    with pytest.raises(ValueError, match="max_tokens"):
        patch_length(100, max_tokens=0)


@pytest.mark.slow  # parses 12 .ts files (~5 s idle, ~20 s on a loaded machine)
def test_every_shipped_ucr_set_loads_offline(tmp_path):
    assert all(available_offline().values())
    for name in AEON_UCR:
        tr = load_dataset(name, "train", cache_dir=tmp_path, max_tokens=64)
        te = load_dataset(name, "test", cache_dir=tmp_path, max_tokens=64)
        assert tr.x.shape[1] <= 64 and tr.x.shape[2] == te.x.shape[2] == tr.meta.get("patch_len", 1)
        assert tr.classes == te.classes and len(tr.classes) >= 2
    acsf = load_dataset("ACSF1", "val", cache_dir=tmp_path, max_tokens=64)
    assert acsf.x.shape[1:] == (64, 23) and acsf.meta["longest"] == 1460
    raw = load_dataset("GunPoint", "train", cache_dir=tmp_path)
    assert raw.x.shape[1:] == (150, 1)
