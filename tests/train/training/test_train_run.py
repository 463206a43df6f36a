"""End-to-end training runs on the tiny store: CLI outputs, exact mid-epoch resume, DDP with gloo."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from resumed_runs import assert_same_run

from luna_train.cli.main import main
from luna_train.config import load_config
from luna_train.training.checkpoint import load_checkpoint
from luna_train.training.loop import Interrupted
from luna_train.training.run import run_training

from paths import REPO

TINY = [
    "model.channels=[4, 8]", "model.strides=[2]", "model.num_res_units=1", "data.batch_size=4",
    "data.num_workers=0", "data.train_size=16", "data.eval_scale=16", "sampler.scale_weights={16: 1, 24: 1}",
    "sampler.samples_per_epoch=16", "train.epochs=2", "optim.warmup_epochs=0.5", "logging.progress=false",
]
SUMMARY_KEYS = {"val_dice", "test_dice", "generalization", "val_pooled_dice", "test_pooled_dice", "epochs_run",
                "best_epoch", "seconds", "n_train", "n_val", "n_test", "device"}


def _args(overrides):
    return [a for o in overrides for a in ("--set", o)]


@pytest.mark.slow
def test_cli_run_writes_everything(tiny_store, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "--dataset", tiny_store, "--out", str(out), *_args(TINY),
                                    "--train-subsets", "0-7", "--val-subsets", "8", "--test-subsets", "9"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.csv", "curves.png", "val_panel.png", "summary.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == ["epoch", "step", "train_loss", "val_loss", "val_dice", "val_pooled_dice", "lr",
                                     "seconds"]
    assert metrics["epoch"].tolist() == [1, 2] and metrics["step"].tolist() == [4, 8]
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["n_train"] == 8 * 8 * 2 and summary["n_val"] == 8 and summary["n_test"] == 8
    assert 0.0 <= summary["val_dice"] <= 1.0 and 0.0 <= summary["test_dice"] <= 1.0
    assert '"test_dice"' in res.output  # the summary is printed
    ckpt = torch.load(out / "last.pt", weights_only=True)  # plain contents only
    assert ckpt["state"]["epoch"] == 2 and ckpt["config"]["model"]["channels"] == [4, 8]
    # a finished run is not overwritten by accident
    again = CliRunner().invoke(main, ["run", "--dataset", tiny_store, "--out", str(out), *_args(TINY)])
    assert again.exit_code != 0 and "--resume" in again.output


def test_unknown_set_key_is_a_usage_error(tiny_store, tmp_path):
    res = CliRunner().invoke(main, ["run", "--dataset", tiny_store, "--out", str(tmp_path / "r"),
                                    "--set", "optim.learning_rate=1"])
    assert res.exit_code == 2 and "optim.learning_rate" in res.output and "weight_decay" in res.output


def test_patience_counts_from_the_first_validation_and_an_early_stop_survives_resume(tiny_store, tmp_path):
    """Validation every 3rd epoch, patience 2: the run validates (epoch 3) before patience can run out, stops
    after epochs 4 and 5 bring nothing new, and a --resume of the stopped run trains no further."""
    common = TINY + [f"data.dataset={tiny_store}", "logging.plots=false", "logging.tensorboard=false",
                     "train.epochs=6", "train.val_every=3", "train.patience=2"]
    summary = run_training(load_config(None, common), tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert metrics["val_loss"].notna().tolist() == [False, False, True, False, False]
    assert summary["stopped_early"] and summary["epochs_run"] == 5 and summary["best_epoch"] == 3
    again = run_training(load_config(None, common), tmp_path / "run", resume=True)
    assert again["stopped_early"] and again["epochs_run"] == 5
    assert len(pd.read_csv(tmp_path / "run" / "metrics.csv")) == 5


def test_resume_refuses_a_changed_model_input_or_split(tiny_store, tmp_path):
    """best.pt, the exported spec and the summary rest on what the model saw and where it was validated."""
    from luna_train.config import ConfigError

    common = TINY + [f"data.dataset={tiny_store}", "logging.plots=false", "logging.tensorboard=false",
                     "train.epochs=1"]
    run_training(load_config(None, common), tmp_path / "run")
    for change, named in (("data.eval_scale=24", "data.eval_scale: 16 -> 24"),
                          ("model.channels=[4, 16]", "model.channels: [4, 8] -> [4, 16]"),
                          ("split.val_subsets=[7]", "split.val_subsets: [8] -> [7]")):
        with pytest.raises(ConfigError, match=rf"last\.pt: --resume continues the run as it was trained; these "
                                              rf"settings changed: {re.escape(named)}"):
            run_training(load_config(None, common + ["train.epochs=2", change]), tmp_path / "run", resume=True)
    summary = run_training(load_config(None, common + ["train.epochs=2"]), tmp_path / "run", resume=True)
    assert summary["epochs_run"] == 2  # more epochs are fine


def test_resume_refuses_a_store_built_with_other_preprocessing(tiny_store, tmp_path):
    """`--resume --dataset OTHER` went on with a store of another image dtype, spacing or HU window: one run
    trained on two inputs, and its preprocessing.json described only the second."""
    from luna_prep.errors import InputError

    from conftest import write_tiny_store

    common = TINY + ["logging.plots=false", "logging.tensorboard=false", "train.stop_after_steps=2"]
    with pytest.raises(Interrupted):
        run_training(load_config(None, common + [f"data.dataset={tiny_store}"]), tmp_path / "run")
    other = write_tiny_store(tmp_path / "f16.zarr", image_dtype="float16")
    with pytest.raises(InputError, match=r"f16.zarr: built with other preprocessing .*image_dtype uint8 -> float16"):
        run_training(load_config(None, common + [f"data.dataset={other}"]), tmp_path / "run", resume=True)


def test_resume_mid_epoch_matches_uninterrupted_run(tiny_store, tmp_path):
    # dropout draws from torch's RNG, hard mining changes the sampler: both must be restored exactly
    common = TINY + [f"data.dataset={tiny_store}", "model.dropout=0.2", "sampler.hard_mining_every=1",
                     "logging.plots=false", "logging.tensorboard=false"]
    run_training(load_config(None, common), tmp_path / "full")
    cfg = load_config(None, common + ["train.checkpoint_every_steps=1", "train.stop_after_steps=6"])
    with pytest.raises(Interrupted):
        run_training(cfg, tmp_path / "cut")
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert cut["state"]["step"] == 6 and cut["state"]["step_in_epoch"] == 2  # killed mid-epoch 2
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, stop_after_steps=None))
    run_training(cfg, tmp_path / "cut", resume=True)
    assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.mark.slow
def test_ddp_two_processes_gloo(tiny_store, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           "-m", "luna_train.cli.main", "run", "--dataset", tiny_store, "--out", str(out),
           *_args(TINY + ["train.epochs=1", "logging.plots=false"])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["samples_per_rank"] == [8, 8]  # 16 draws per epoch split over two ranks
    draws = summary["rank_draws"]
    assert draws["items_per_rank"] == [8, 8] and draws["disjoint_shares_match"] is True
    assert summary["n_val"] == 8 and summary["n_test"] == 8  # sharded evaluation still counts every patch once
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()


def test_a_run_stopped_by_stop_after_steps_resumes_to_its_end_from_the_command_line(tiny_store, tmp_path):
    """config.yaml kept train.stop_after_steps, so each `--resume` ran one more step and stopped again (exit 3)."""
    out = tmp_path / "r"
    args = ["--dataset", tiny_store, "--out", str(out), *_args(TINY + ["logging.plots=false"])]
    res = CliRunner().invoke(main, ["run", *args, "--set", "train.stop_after_steps=2"])
    assert res.exit_code == 3, res.output
    assert load_checkpoint(out / "last.pt")["state"]["step"] == 2
    # written at the start (it was written only by a finished run): a stopped run's checkpoints predict
    assert json.loads((out / "preprocessing.json").read_text())["image_dtype"] == "uint8"
    res = CliRunner().invoke(main, ["run", "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert json.loads((out / "summary.json").read_text())["steps"] == load_config(out / "config.yaml").train.epochs * 4


def test_each_rank_resumes_its_own_partial_epoch_loss():
    """The checkpoint's state is rank 0's: rank 1 resumed with rank 0's partial loss sum, and the epoch's logged
    train loss (the ranks' mean) came out wrong after a mid-epoch resume of a 2-rank run."""
    from types import SimpleNamespace

    from luna_train.training.fit import restore
    from luna_train.training.loop import LoopState

    quiet = SimpleNamespace(load_state_dict=lambda *_: None)
    parts = SimpleNamespace(model=quiet, optimizer=quiet, scheduler=quiet, scaler=quiet, sampler=quiet)
    state = LoopState(step=3, step_in_epoch=3, loss_sum=3.1, epoch_seconds=5.0)
    ckpt = {"model": {}, "optimizer": {}, "scheduler": {}, "scaler": {}, "sampler": {}, "state": state.to_dict(),
            "per_rank": [{"rng": None, "hard": {}, "samples_seen": 12, "loss_sum": 3.1, "epoch_seconds": 5.0},
                         {"rng": None, "hard": {}, "samples_seen": 12, "loss_sum": 2.9, "epoch_seconds": 5.5}]}
    assert (restore(parts, ckpt, 0).state.loss_sum, restore(parts, ckpt, 0).state.epoch_seconds) == (3.1, 5.0)
    assert (restore(parts, ckpt, 1).state.loss_sum, restore(parts, ckpt, 1).state.epoch_seconds) == (2.9, 5.5)
    for entry in ckpt["per_rank"]:  # a checkpoint written before: rank 0's, as before
        del entry["loss_sum"], entry["epoch_seconds"]
    assert restore(parts, ckpt, 1).state.loss_sum == 3.1
