"""Transfer tasks: splits and determinism."""

import numpy as np
import pytest

from dualattn.transfer.tasks import load_task, split_indices


def test_digits_clutter_is_deterministic_and_labelled_by_the_bright_digit():
    a, b = load_task("digits-clutter", n=40, seed=3), load_task("digits-clutter", n=40, seed=3)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.inputs.shape == (40, 24, 24) and 0 <= a.inputs.min() and a.inputs.max() <= 1
    # exactly one 8x8 cell holds the full-intensity target; distractors are at most 0.45
    cells = a.inputs.reshape(40, 3, 8, 3, 8).max(axis=(2, 4)).reshape(40, 9)
    assert ((cells > 0.5).sum(1) == 1).all()
    assert not np.array_equal(load_task("digits-clutter", n=40, seed=4).inputs, a.inputs)


def test_vision_split_is_stratified_and_disjoint():
    task = load_task("digits")
    tr, te = split_indices(task, 0, n_train=1000)
    assert len(tr) == 1000 and len(te) == len(task) - 1000 and not set(tr) & set(te)
    frac = np.bincount(task.y[tr], minlength=10) / 1000
    assert np.abs(frac - np.bincount(task.y, minlength=10) / len(task)).max() < 0.01
    assert not np.array_equal(split_indices(task, 1, n_train=1000)[0], tr)


def test_text_split_holds_out_whole_templates():
    task = load_task("text-topics", n=240)
    assert len(task.classes) == 8 and set(np.unique(task.y)) == set(range(8))
    assert all(isinstance(t, str) for t in task.inputs)
    tr, te = split_indices(task, 0)
    assert not set(task.groups[tr]) & set(task.groups[te])  # no template in both
    assert len(set(task.groups[te])) == 4


def test_unknown_task_rejected():
    with pytest.raises(ValueError, match="task"):
        load_task("cifar10")
