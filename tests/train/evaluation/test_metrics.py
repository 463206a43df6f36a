"""Dice, precision and recall on hand-counted cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from luna_train.evaluation.metrics import (
    Counts, batch_dice, confusion, dice, mean_dice, pooled_counts, pooled_dice)


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
