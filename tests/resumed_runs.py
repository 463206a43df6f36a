"""The check every stop-and-resume test makes: the resumed run ended exactly as the uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from luna_train.training.checkpoint import load_checkpoint

COMPARED = ["epoch", "step", "train_loss", "val_dice"]


def assert_same_run(full: Path, resumed: Path) -> None:
    """``resumed`` (stopped, then resumed) holds the run ``full`` (never stopped) holds: last.pt's weights bit for
    bit, and metrics.csv's epochs, steps, train losses and validation Dice."""
    a, b = (load_checkpoint(run / "last.pt")["model"] for run in (full, resumed))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (pd.read_csv(run / "metrics.csv") for run in (full, resumed))
    assert ma[COMPARED].equals(mb[COMPARED])
