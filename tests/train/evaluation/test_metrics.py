"""Dice, precision and recall on hand-counted cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from luna_train.evaluation.metrics import (
    Counts,
    batch_counts,
    batch_dice,
    binarize,
    confusion,
    dice,
    dice_from_counts,
    mean_dice,
    pooled_counts,
    pooled_dice,
)


def mask(*idx: int, n: int = 6) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[list(idx)] = True
    return m


def test_single_patch_dice():
    # pred {0,1,2,3}, target {2,3}: TP 2, FP 2, FN 0 -> 2*2 / (4 + 2) = 2/3
    assert confusion(mask(0, 1, 2, 3), mask(2, 3)) == Counts(tp=2, fp=2, fn=0)
    assert dice(mask(0, 1, 2, 3), mask(2, 3)) == pytest.approx(2 / 3)
    assert dice(mask(), mask()) == 1.0  # both empty
    assert dice(mask(1), mask()) == 0.0 and dice(mask(), mask(1)) == 0.0
    assert dice(mask(1, 4), mask(1, 4)) == 1.0


def test_pooled_versus_per_patch():
    preds = [mask(0, 1, 2, 3), mask(), mask()]
    targets = [mask(2, 3), mask(4, 5), mask()]
    # per patch: 2/3, 0, 1 (both empty) -> mean 5/9
    assert mean_dice(preds, targets) == pytest.approx(5 / 9)
    # pooled: TP 2, FP 2, FN 2 -> Dice 4 / (4 + 2 + 2) = 1/2, precision 2/4, recall 2/4
    c = pooled_counts(preds, targets)
    assert c == Counts(2, 2, 2)
    assert (c.dice, c.precision, c.recall) == (0.5, 0.5, 0.5)
    assert pooled_dice(preds, targets) == 0.5
    assert c.to_dict() == {"tp": 2, "fp": 2, "fn": 2, "dice": 0.5, "precision": 0.5, "recall": 0.5}


def test_empty_conventions():
    assert (Counts().dice, Counts().precision, Counts().recall) == (1.0, 1.0, 1.0)
    assert (Counts(fn=3).precision, Counts(fn=3).recall) == (1.0, 0.0)
    assert (Counts(fp=3).precision, Counts(fp=3).recall) == (0.0, 1.0)


def test_batch_dice_and_torch_inputs():
    pred = torch.zeros(3, 1, 2, 2, 2)
    target = torch.zeros(3, 1, 2, 2, 2)
    pred[0, 0, 0, 0, :] = 1  # 2 voxels
    target[0, 0, 0, 0, 0] = 1  # 1 voxel, overlap 1 -> 2/3
    target[1, 0, 1, 1, 1] = 1  # pred empty -> 0; item 2 both empty -> 1
    np.testing.assert_allclose(batch_dice(pred, target), [2 / 3, 0.0, 1.0])
    assert dice(pred[0], target[0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        dice(np.zeros(3), np.zeros(4))


def test_binarize_keeps_a_value_at_the_threshold():
    prob = np.array([0.2, 0.5, 0.50001, 0.9])
    assert binarize(prob, 0.5).tolist() == [False, True, True, True]
    t = binarize(torch.tensor([0.49, 0.5, 0.7]), 0.5)
    assert t.dtype == torch.bool and t.tolist() == [False, True, True]


def test_dice_from_counts_agrees_across_numbers_arrays_and_tensors():
    tp, fp, fn = [2, 0, 0, 3], [2, 0, 0, 1], [0, 1, 0, 2]  # 2/3, 0, 1 (both empty), 6/9
    want = [2 / 3, 0.0, 1.0, 6 / 9]
    assert [dice_from_counts(*c) for c in zip(tp, fp, fn)] == want
    np.testing.assert_array_equal(dice_from_counts(np.array(tp), np.array(fp), np.array(fn)), want)
    t = dice_from_counts(torch.tensor(tp), torch.tensor(fp), torch.tensor(fn))
    assert t.dtype == torch.float64 and t.tolist() == want


def test_batch_counts_of_tensors_stay_tensors():
    pred = torch.zeros(2, 1, 2, 2, 2, dtype=torch.bool)
    target = torch.zeros(2, 1, 2, 2, 2, dtype=torch.bool)
    pred[0, 0, 0, 0, :] = True
    target[0, 0, 0, 0, 0] = True
    target[1, 0, 1, 1, 1] = True
    tp, fp, fn = batch_counts(pred, target)
    assert isinstance(tp, torch.Tensor) and (tp.tolist(), fp.tolist(), fn.tolist()) == ([1, 0], [1, 0], [0, 1])
    np.testing.assert_array_equal(np.stack(batch_counts(pred.numpy(), target.numpy())), [[1, 0], [1, 0], [0, 1]])
