"""Official LRA file loaders on tiny files written by the tests."""

import numpy as np
import pytest
import torch
from PIL import Image

from dualattn.data import load_dataset
from dualattn.data import listops as lo

ROWS = {
    "train": [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( [SM 3 ) ( ( [MED 1 ) 5 ) ] ) ) ] )", 6), ("7", 7)],
    "val": [("( ( ( [MIN 4 ) 1 ) ] )", 1)],
    "test": [("( ( ( ( [MED 1 ) 2 ) 7 ) ] )", 2), ("( ( ( [MAX 0 ) 0 ) ] )", 0)],
}


def write_listops(folder, rows=ROWS):
    folder.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        lines = ["Source\tTarget"] + [f"{s}\t{t}" for s, t in items]
        (folder / f"basic_{split}.tsv").write_text("\n".join(lines) + "\n")


def test_lra_listops_roundtrip(tmp_path):
    write_listops(tmp_path / "lra_release" / "listops-1000")
    tr = load_dataset("listops", "train", root=tmp_path, cache_dir=tmp_path / "c")
    te = load_dataset("listops", "test", root=tmp_path, cache_dir=tmp_path / "c")
    assert tr.vocab_size == lo.VOCAB_SIZE and tr.seq_len == te.seq_len == 7  # longest over all files
    assert tr.y.tolist() == [9, 6, 7] and te.y.tolist() == [2, 0]
    for d in (tr, te):
        for i in range(len(d)):
            assert lo.evaluate_ids(d.x[i, d.mask[i]].numpy()) == d.y[i]
    assert lo.decode(tr.x[1]) == "[SM 3 [MED 1 5 ] ]"
    par = load_dataset("listops", "train", root=tmp_path, cache_dir=tmp_path / "c", keep_parens=True)
    assert (par.x == lo.TOKEN_ID["("]).any() and par.seq_len > tr.seq_len
    with pytest.raises(ValueError, match="truncate"):
        load_dataset("listops", "train", root=tmp_path, cache_dir=tmp_path / "c", max_len=4)


def test_lra_listops_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="basic_train.tsv"):
        load_dataset("listops", "train", root=tmp_path)
    write_listops(tmp_path, {**ROWS, "val": [("( [FIRST 1 2 ] )", 1)]})
    with pytest.raises(ValueError, match=r"basic_val.tsv:2: .*\[FIRST"):
        load_dataset("listops", "val", root=tmp_path, cache_dir=tmp_path / "c")
    (tmp_path / "basic_val.tsv").write_text("Src\tTgt\n1\t1\n")
    with pytest.raises(ValueError, match="header"):
        load_dataset("listops", "val", root=tmp_path, cache_dir=tmp_path / "c")


def write_pathfinder(base, n=20, res=32):
    rng = np.random.default_rng(0)
    (base / "metadata").mkdir(parents=True)
    labels = []
    for f in range(2):  # metadata/0.npy and metadata/1.npy (text, as in LRA)
        lines = []
        for i in range(n // 2):
            k = f * (n // 2) + i
            img = (rng.random((res, res)) * 255).astype(np.uint8)
            img[0, 0] = k  # identify the image
            (base / "imgs" / str(f)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(base / "imgs" / str(f) / f"sample_{i}.png")
            labels.append(k % 2)
            lines.append(f"imgs/{f} sample_{i}.png 0 {k % 2} 1.8 6 2.0 5 1.5 2 1")
        (base / "metadata" / f"{f}.npy").write_text("\n".join(lines) + "\n")
    return labels


def test_lra_pathfinder(tmp_path):
    base = tmp_path / "pathfinder32" / "curv_baseline"
    labels = write_pathfinder(base)
    kw = dict(root=tmp_path, cache_dir=tmp_path / "c", progress=False)
    tr = load_dataset("pathfinder", "train", as_tokens=True, **kw)
    va = load_dataset("pathfinder", "val", as_tokens=True, **kw)
    te = load_dataset("pathfinder", "test", as_tokens=True, **kw)
    assert (len(tr), len(va), len(te)) == (16, 2, 2)  # contiguous 80/10/10 as in LRA
    assert tr.x.shape == (16, 1024) and tr.vocab_size == 256
    order = torch.cat([tr.x[:, 0], va.x[:, 0], te.x[:, 0]]).tolist()
    assert order == list(range(20))  # metadata files read in numeric order, lines in order
    assert torch.cat([tr.y, va.y, te.y]).tolist() == labels
    f = load_dataset("pathfinder", "test", difficulty="easy", **kw)
    assert f.x.shape == (2, 1024, 1) and f.stats is not None


def test_lra_pathfinder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata"):
        load_dataset("pathfinder", "train", root=tmp_path)
    with pytest.raises(ValueError, match="difficulty"):
        load_dataset("pathfinder", "train", root=tmp_path, difficulty="medium-rare")
    base = tmp_path / "curv_contour_length_14"
    write_pathfinder(base, n=4)
    (base / "imgs" / "1" / "sample_0.png").unlink()
    with pytest.raises(FileNotFoundError, match="sample_0.png"):
        load_dataset("pathfinder", "train", root=tmp_path, difficulty="hard", cache_dir=tmp_path / "c", progress=False)
