"""UEA loading: shipped datasets, user .ts folders, variable lengths, missing values, errors."""

import numpy as np
import pytest
import torch

from dualattn.data import load_dataset


def test_basic_motions_shapes_and_normalisation(tmp_path):
    tr = load_dataset("BasicMotions", "train", cache_dir=tmp_path)
    va = load_dataset("BasicMotions", "val", cache_dir=tmp_path)
    te = load_dataset("BasicMotions", "test", cache_dir=tmp_path)
    assert tr.x.shape == (32, 100, 6) and va.x.shape == (8, 100, 6) and te.x.shape == (40, 100, 6)
    assert tr.x.dtype == torch.float32 and tr.mask.all() and tr.vocab_size is None
    assert tr.classes == va.classes == te.classes == sorted(tr.classes) and len(tr.classes) == 4
    # stratified: 2 of each class's 10 train cases go to val
    assert va.class_counts().tolist() == [2, 2, 2, 2]
    # z-scored with train statistics: train has mean 0 / std 1 per channel
    v = tr.x[tr.mask]
    torch.testing.assert_close(v.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(v.std(0, unbiased=False), torch.ones(6), atol=1e-4, rtol=0)
    assert torch.equal(tr.stats["mean"], te.stats["mean"])
    raw = load_dataset("BasicMotions", "test", cache_dir=tmp_path, normalize=False)
    back = raw.x * 1.0
    torch.testing.assert_close((back - te.stats["mean"]) / te.stats["std"], te.x, atol=1e-4, rtol=1e-4)


def test_japanese_vowels_variable_length(tmp_path):
    tr = load_dataset("JapaneseVowels", "train", cache_dir=tmp_path)
    te = load_dataset("japanesevowels", "test", cache_dir=tmp_path)
    assert tr.name == "JapaneseVowels"
    assert tr.seq_len == te.seq_len == 29 and tr.num_channels == 12
    lengths = torch.cat([tr.lengths, te.lengths])
    assert lengths.min() == 7 and lengths.max() == 29
    # mask is a prefix mask and padding is exactly zero
    for d in (tr, te):
        assert torch.equal(d.mask, torch.arange(d.seq_len)[None] < d.lengths[:, None])
        assert (d.x[~d.mask] == 0).all()
    assert tr.classes == [str(i) for i in range(1, 10)]
    assert len(tr) + len(load_dataset("JapaneseVowels", "val", cache_dir=tmp_path)) == 270


def test_val_split_depends_on_seed(tmp_path):
    a = load_dataset("BasicMotions", "val", cache_dir=tmp_path, seed=0)
    b = load_dataset("BasicMotions", "val", cache_dir=tmp_path, seed=0)
    c = load_dataset("BasicMotions", "val", cache_dir=tmp_path, seed=1)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    full = load_dataset("BasicMotions", "train", cache_dir=tmp_path, val_fraction=0.0)
    assert len(full) == 40
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("BasicMotions", "val", cache_dir=tmp_path, val_fraction=0.0)


HEADER = """#toy
@problemName {name}
@timeStamps false
@missing {missing}
@univariate false
@dimensions 2
@equalLength {equal}
@classLabel true {labels}
@data
"""


def write_ts(path, name, cases, labels, label_set=None):
    equal = len({len(c[0]) for c in cases}) == 1
    missing = any("?" in v for c in cases for ch in c for v in ch)
    text = HEADER.format(
        name=name, missing=str(missing).lower(), equal=str(equal).lower(),
        labels=" ".join(label_set or sorted(set(labels))),
    )
    for chans, lab in zip(cases, labels):
        text += ":".join(",".join(ch) for ch in chans) + ":" + lab + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _cases(rng, n, lengths):
    out = []
    for i in range(n):
        t = lengths[i % len(lengths)]
        out.append([[f"{v:.4f}" for v in rng.normal(size=t)] for _ in range(2)])
    return out


def test_user_folder_unequal_lengths(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "uea"
    labels_tr = ["b", "a", "b", "a", "b", "a", "b", "a", "b", "a"]
    write_ts(root / "Toy" / "Toy_TRAIN.ts", "Toy", _cases(rng, 10, [3, 5, 4]), labels_tr)
    write_ts(root / "Toy" / "Toy_TEST.ts", "Toy", _cases(rng, 4, [6, 2]), ["a", "b", "a", "b"])
    tr = load_dataset("Toy", "train", root=root, cache_dir=tmp_path / "cache")
    te = load_dataset("Toy", "test", root=root, cache_dir=tmp_path / "cache")
    assert tr.classes == ["a", "b"] and tr.seq_len == te.seq_len == 6  # longest of TRAIN+TEST
    assert te.lengths.tolist() == [6, 2, 6, 2] and te.y.tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="truncate"):
        load_dataset("Toy", "test", root=root, cache_dir=tmp_path / "cache", max_len=4)
    cropped = load_dataset("Toy", "test", root=root, cache_dir=tmp_path / "cache", max_len=4, truncate=True)
    assert cropped.seq_len == 4 and cropped.lengths.tolist() == [4, 2, 4, 2]
    padded = load_dataset("Toy", "test", root=root, cache_dir=tmp_path / "cache", max_len=10)
    assert padded.seq_len == 10 and padded.lengths.tolist() == [6, 2, 6, 2]


def test_user_folder_flat_layout_and_raw_values(tmp_path):
    cases = [[["1", "2", "3"], ["0", "0", "0"]], [["4", "5", "6"], ["1", "1", "1"]]]
    write_ts(tmp_path / "Flat_TRAIN.ts", "Flat", cases * 2, ["x", "y", "x", "y"])
    write_ts(tmp_path / "Flat_TEST.ts", "Flat", cases, ["y", "x"])
    te = load_dataset("Flat", "test", root=tmp_path, cache_dir=tmp_path / "c", normalize=False)
    np.testing.assert_allclose(te.x[0].numpy(), [[1, 0], [2, 0], [3, 0]])
    assert te.y.tolist() == [1, 0]


def test_missing_values(tmp_path):
    cases = [[["1", "?", "3", "?"], ["0", "0", "0", "?"]], [["4", "5", "6", "?"], ["1", "1", "1", "1"]]]
    write_ts(tmp_path / "Miss_TRAIN.ts", "Miss", cases * 3, ["x", "y"] * 3)
    write_ts(tmp_path / "Miss_TEST.ts", "Miss", cases, ["x", "y"])
    kw = dict(root=tmp_path, cache_dir=tmp_path / "c", normalize=False, val_fraction=0.0)
    d = load_dataset("Miss", "test", **kw)
    # last step is NaN in every channel -> padding; interior '?' interpolated
    assert d.lengths.tolist() == [3, 4]
    np.testing.assert_allclose(d.x[0, :3, 0].numpy(), [1, 2, 3])
    np.testing.assert_allclose(d.x[1, 3].numpy(), [6.0, 1.0])  # trailing NaN in one channel: edge value held
    assert torch.isfinite(d.x).all()
    with pytest.raises(ValueError, match="missing value at case 0, step 1"):
        load_dataset("Miss", "test", missing="error", **kw)
    m = load_dataset("Miss", "test", missing="mean", **kw)
    assert m.x[0, 1, 0].item() == pytest.approx(np.mean([1, 3, 4, 5, 6]))


def test_missing_files_and_labels(tmp_path):
    with pytest.raises(FileNotFoundError, match="Heartbeat_TRAIN.ts"):
        load_dataset("Heartbeat", "train")
    with pytest.raises(FileNotFoundError, match=r"Heartbeat[/\\]Heartbeat_TRAIN.ts"):
        load_dataset("Heartbeat", "train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="Other_TEST.ts"):
        write_ts(tmp_path / "Other_TRAIN.ts", "Other", [[["1"], ["2"]]], ["a"])
        load_dataset("Other", "train", root=tmp_path)
    cases = [[["1", "2"], ["0", "0"]]]
    write_ts(tmp_path / "Lab_TRAIN.ts", "Lab", cases * 4, ["a", "b", "a", "b"])
    write_ts(tmp_path / "Lab_TEST.ts", "Lab", cases, ["c"], label_set=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"\['c'\]"):
        load_dataset("Lab", "test", root=tmp_path, cache_dir=tmp_path / "c")
    with pytest.raises(TypeError, match="unknown option"):
        load_dataset("BasicMotions", "train", cache_dir=tmp_path, bogus=1)


def test_env_root_and_empty_val(tmp_path, monkeypatch):
    cases = [[["1", "2"], ["0", "0"]], [["4", "5"], ["1", "1"]]]
    write_ts(tmp_path / "Heartbeat" / "Heartbeat_TRAIN.ts", "Heartbeat", cases * 2, ["a", "b", "a", "b"])
    write_ts(tmp_path / "Heartbeat" / "Heartbeat_TEST.ts", "Heartbeat", cases, ["a", "b"])
    monkeypatch.setenv("DUALATTN_UEA_ROOT", str(tmp_path))
    d = load_dataset("Heartbeat", "test", cache_dir=tmp_path / "c")
    assert d.name == "Heartbeat" and len(d) == 2 and d.x.shape == (2, 2, 2)
    # 2 cases per class: 0.2 * 2 rounds to 0, so nothing is held out ...
    assert len(load_dataset("Heartbeat", "train", cache_dir=tmp_path / "c")) == 4
    with pytest.raises(ValueError, match="hold-out is empty"):
        load_dataset("Heartbeat", "val", cache_dir=tmp_path / "c")
    # ... while 0.5 holds out one case per class
    assert len(load_dataset("Heartbeat", "val", cache_dir=tmp_path / "c", val_fraction=0.5)) == 2


def test_label_not_declared_in_class_label_header(tmp_path):
    from dualattn.data.uea import declared_class_labels

    cases = [[["1", "2"], ["0", "0"]]]
    write_ts(tmp_path / "Und_TRAIN.ts", "Und", cases * 4, ["a", "b", "a", "zz"], label_set=["a", "b"])
    write_ts(tmp_path / "Und_TEST.ts", "Und", cases * 2, ["a", "b"], label_set=["a", "b"])
    assert declared_class_labels(tmp_path / "Und_TEST.ts") == ["a", "b"]
    with pytest.raises(ValueError) as err:
        load_dataset("Und", "train", root=tmp_path, cache_dir=tmp_path / "c")
    msg = str(err.value)
    assert "Und_TRAIN.ts" in msg and "['zz']" in msg and "['a', 'b']" in msg and "case 3" in msg
    # the shipped files declare all their labels
    from dualattn.data.uea import aeon_data_dir

    for name in ("BasicMotions", "JapaneseVowels"):
        assert declared_class_labels(aeon_data_dir() / name / f"{name}_TRAIN.ts")
