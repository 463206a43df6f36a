"""Training's validation: Dice sums by hand, the threshold convention shared with evaluation, resume on a bad file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from luna_train.config import load_config
from luna_train.evaluation.patch_eval import patch_metrics
from luna_train.training.checkpoint import LAST, CheckpointError
from luna_train.training.loop import validate
from luna_train.training.run import run_training


class ConstantLogit(nn.Module):
    """Logit ``value`` everywhere: sigmoid(0) is exactly 0.5, the default threshold."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, self.value)


def _batch() -> dict:
    label = torch.zeros(2, 1, 2, 2, 2)
    label[0, 0, 0, 0, 0] = 1  # item 0: one nodule voxel of 8; item 1: empty
    return {"image": torch.zeros(2, 1, 2, 2, 2), "label": label, "position": torch.tensor([0, 1])}


def test_validate_counts_a_probability_at_the_threshold_as_foreground():
    res = validate(ConstantLogit(0.0), [_batch()], nn.BCEWithLogitsLoss(), torch.device("cpu"), threshold=0.5)
    # every voxel predicted: item 0 Dice 2*1 / (8 + 1); pooled TP 1, FP 15, FN 0 -> 2 / 17
    assert res.n_patches == 2 and res.n_foreground == 1
    assert res.dice == pytest.approx(2 / 9) and res.pooled_dice == pytest.approx(2 / 17)
    below = validate(ConstantLogit(-1e-3), [_batch()], nn.BCEWithLogitsLoss(), torch.device("cpu"), threshold=0.5)
    assert below.dice == 0.0 and below.pooled_dice == 0.0  # nothing predicted, one voxel missed


def test_validate_and_patch_evaluation_agree_at_the_threshold():
    batch = _batch()
    res = validate(ConstantLogit(0.0), [batch], nn.BCEWithLogitsLoss(), torch.device("cpu"), threshold=0.5)
    probs = [np.full((2, 2, 2), 0.5, np.float32)] * 2
    m = patch_metrics(probs, [batch["label"][i, 0].numpy() > 0.5 for i in range(2)], 0.5)
    assert (m["dice"], m["pooled_dice"]) == (pytest.approx(res.dice), pytest.approx(res.pooled_dice))


def test_resume_from_a_broken_last_pt_names_it(tiny_store, tmp_path):
    cfg = load_config(None, [f"data.dataset={tiny_store}", "model.channels=[4, 8]", "model.strides=[2]",
                             "data.num_workers=0", "data.train_size=16", "data.eval_scale=16", "logging.plots=false",
                             "logging.tensorboard=false", "logging.progress=false"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LAST).write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        run_training(cfg, tmp_path / "run", resume=True)
    assert str(tmp_path / "run" / LAST) in str(info.value) and "afresh" in str(info.value)
