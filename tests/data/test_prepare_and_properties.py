"""prepare CLI helpers and property-based checks of the generic pieces."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dualattn.data import SequenceData, trim_collate
from dualattn.data import listops as lo
from dualattn.data.base import stratified_split
from dualattn.data.prepare import app, describe, parse_options, prepare


def test_parse_options():
    assert parse_options(["n_train=10", "keep_parens=True", "difficulty=hard", "endpoint_dist=(4, 9)"]) == {
        "n_train": 10, "keep_parens": True, "difficulty": "hard", "endpoint_dist": (4, 9)}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["oops"])


def test_prepare_and_cli(tmp_path):
    out = prepare("listops", cache_dir=tmp_path, progress=False, n_train=30, n_val=10, n_test=10,
                  min_len=5, max_len=30, max_depth=3, max_args=3, chunk_size=25)
    info = describe(out["val"])
    assert info["n"] == 10 and info["T"] == 30 and 5 <= info["len_min"] <= info["len_max"] <= 30
    assert sum(int(c) for c in info["class_counts"].split()) == 10
    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "BasicMotions", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "train" in res.output and "32" in res.output
    res = runner.invoke(app, ["prepare", "Heartbeat", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "listops" in runner.invoke(app, ["list"]).output


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=2, max_size=60), st.floats(0.0, 0.9), st.integers(0, 10))
def test_stratified_split_properties(labels, frac, seed):
    y = np.array(labels)
    keep, held = stratified_split(y, frac, seed)
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(len(y)))
    assert set(y[keep]) == set(y)  # every class keeps at least one training row
    for c in np.unique(y):
        n_c = (y == c).sum()
        assert (y[held] == c).sum() == min(int(np.floor(frac * n_c + 0.5)), n_c - 1)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=8), st.integers(10, 14), st.integers(1, 4))
def test_trim_collate_keeps_every_real_step(lengths, t, c):
    n = len(lengths)
    ln = torch.tensor(lengths)
    mask = torch.arange(t)[None] < ln[:, None]
    x = torch.randn(n, t, c) * mask[..., None]
    d = SequenceData(x, mask, torch.zeros(n, dtype=torch.long), ["a"])
    xb, mb, _ = trim_collate([d[i] for i in range(n)])
    assert xb.shape[1] == max(lengths)
    assert torch.equal(xb[mb], x[mask]) and mb.sum() == mask.sum()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5), st.integers(2, 6), st.booleans())
def test_listops_samples_evaluate_to_their_label(seed, depth, args, parens):
    import random

    cfg = lo.ListOpsConfig(max_depth=depth, max_args=args, min_len=1, max_len=400, keep_parens=parens).validate()
    out = lo.sample_tree(random.Random(seed), cfg)
    if out is None:
        return
    toks, value = out
    assert 0 <= value <= 9 and len(toks) <= 400
    assert lo.evaluate_ids(toks) == value
    assert lo.encode(lo.decode(toks), keep_parens=parens) == toks
