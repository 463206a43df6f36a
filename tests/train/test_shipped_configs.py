"""Every config file shipped in configs/ trains a few steps on the CPU: a shipped config never breaks unseen.

Each config runs as written except for the size of the model and of the run (``--set``): its own
train_size, eval_scale, sampler, loss, augmentation and schedule, DataLoader workers (>= 1), on a
tiny store holding all three scales 48/64/96, with validation, a final test and checkpoints.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from luna_train.cli.main import main
from luna_train.config import load_config

from conftest import write_tiny_store
from paths import REPO

CONFIGS = ["demo.yaml", "luna16.yaml"]  # every file of configs/ (checked below)

SMALL = [
    "model.channels=[4, 8, 8]", "model.strides=[2, 2]", "model.num_res_units=1", "model.deep_supr_num=1",
    "data.batch_size=4", "data.val_batch_size=4", "data.num_workers=1", "sampler.samples_per_epoch=8",
    "train.epochs=2", "train.patience=0", "train.checkpoint_every_steps=1", "optim.warmup_epochs=0.5",
    "logging.progress=false", "logging.wandb=false",
]


@pytest.fixture(scope="module")
def three_scale_store(tmp_path_factory):
    """10 scans (one per subset) of 4 samples, 2 of them nodules, at the shipped scales 48, 64 and 96."""
    return write_tiny_store(tmp_path_factory.mktemp("cfg") / "store.zarr", scales=(48, 64, 96), n_scans=10,
                            samples_per_scan=4)


def test_every_config_file_is_tested():
    assert sorted(p.name for p in (REPO / "configs").iterdir() if p.suffix in (".yaml", ".yml", ".toml")) == CONFIGS


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_trains(name, three_scale_store, tmp_path):
    path, out = REPO / "configs" / name, tmp_path / "run"
    shipped = load_config(path)
    args = ["run", "--config", str(path), "--dataset", three_scale_store, "--out", str(out),
            "--train-subsets", "0-7", "--val-subsets", "8", "--test-subsets", "9"]
    res = CliRunner().invoke(main, args + [a for o in SMALL for a in ("--set", o)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    summary = json.loads((out / "summary.json").read_text())
    weights = {int(k): float(v) for k, v in shipped.sampler.scale_weights.items()}
    assert summary["train_scales"] == [s for s in (48, 64, 96) if weights.get(s, 1.0) > 0]
    assert summary["train_size"] == shipped.data.train_size and summary["eval_scale"] == shipped.data.eval_scale
    assert summary["epochs_run"] == 2 and summary["steps"] == 4  # 8 draws of 4 a epoch
    assert summary["n_val"] == 4 and summary["n_test"] == 4 and summary["n_val_foreground"] == 2
    assert 0.0 <= summary["val_dice"] <= 1.0 and 0.0 <= summary["test_dice"] <= 1.0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["state"]["step"] == 4 and ckpt["config"]["loss"]["name"] == shipped.loss.name
    assert ckpt["config"]["model"]["name"] == shipped.model.name and ckpt["config"]["data"]["num_workers"] == 1
    assert (out / "best.pt").is_file()
