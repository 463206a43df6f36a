"""Long jobs report: the per-epoch log line, the start message, TensorBoard contents, W&B and MLflow offline."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from click.testing import CliRunner

from luna_train.cli.main import main
from luna_train.training.fit import epoch_line
from luna_train.training.run_log import RunLogger, flat_params

TINY = [
    "model.channels=[4, 8]", "model.strides=[2]", "model.num_res_units=1", "data.batch_size=4",
    "data.num_workers=0", "data.train_size=16", "data.eval_scale=16", "sampler.scale_weights={16: 1, 24: 1}",
    "sampler.samples_per_epoch=16", "train.epochs=2", "optim.warmup_epochs=0.5", "logging.progress=false",
    "logging.step_every=2",
]
CONFIG = {"optim": {"lr": 3e-4, "betas": [0.9, 0.999]}, "model": {"name": "unet"}, "split": {"fold": None}}
ROWS = [{"epoch": 1, "step": 4, "train_loss": 0.9, "val_loss": 0.8, "val_dice": 0.25, "val_pooled_dice": 0.2,
         "lr": 1e-3, "seconds": 1.0},
        {"epoch": 2, "step": 8, "train_loss": 0.7, "val_loss": 0.6, "val_dice": 0.5, "val_pooled_dice": 0.4,
         "lr": 5e-4, "seconds": 1.0}]


def test_epoch_line_has_every_number():
    line = epoch_line(ROWS[1], epochs=20, best=0.5, best_epoch=1, wall=41.2, mean_wall=40.0)
    assert line == ("epoch 2/20  step 8  loss 0.7000  val Dice 0.5000  best 0.5000 (epoch 2)  lr 5.00e-04  "
                    "41.2 s  ETA 0:12:00")  # 18 epochs left at 40 s
    no_val = epoch_line({**ROWS[0], "val_dice": math.nan}, epochs=3, best=-math.inf, best_epoch=-1, wall=5.0,
                        mean_wall=5.0)
    assert "val Dice -  best -" in no_val and no_val.endswith("ETA 0:00:10")


def test_flat_params_names_nested_keys():
    assert flat_params(CONFIG) == {"optim.lr": 3e-4, "optim.betas": "[0.9, 0.999]", "model.name": "unet",
                                   "split.fold": "None"}


def _panel_png(path):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.eye(8))
    fig.savefig(path, dpi=50)
    plt.close(fig)
    return path


def _log_a_run(logger: RunLogger, png) -> None:
    for row in ROWS:
        logger.log_epoch(row)
    logger.log_scalars({"train_loss": 0.8, "lr": 1e-3}, 2, "step/")
    logger.log_image("validation/panel", png, 8)
    logger.log_scalars({"test_dice": 0.4}, 8, "final/")
    assert logger.final_metrics() == {"hparams/val_dice": 0.5, "hparams/test_dice": 0.4}
    logger.close()


def test_mlflow_logger_writes_a_local_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    _log_a_run(RunLogger(tmp_path, CONFIG, tensorboard=False, mlflow=True, mlflow_experiment="exp", name="r1"),
               _panel_png(tmp_path / "panel.png"))
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    assert run.data.params["optim.lr"] == "0.0003" and run.data.params["model.name"] == "unet"
    history = client.get_metric_history(run.info.run_id, "epoch/val_dice")
    assert [(m.step, m.value) for m in history] == [(4, 0.25), (8, 0.5)]
    assert run.data.metrics["hparams/val_dice"] == 0.5 and run.data.metrics["step/train_loss"] == 0.8
    assert [a.path for a in client.list_artifacts(run.info.run_id, "validation/panel")] == [
        "validation/panel/panel.png"]


def test_wandb_logger_follows_wandb_mode_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = RunLogger(tmp_path, CONFIG, tensorboard=False, wandb=True, wandb_project="p", name="r1")
    run = logger.trackers[0].run
    assert run.settings.mode == "offline" and run.name == "r1" and run.config["optim"]["lr"] == 3e-4
    for row in ROWS:
        logger.log_epoch(row)
    assert run.summary["epoch/val_dice"] == 0.25  # W&B commits step 8's values when a later step or finish comes
    logger.log_image("validation/panel", _panel_png(tmp_path / "panel.png"), 8)
    logger.close()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    assert (run_dir / f"run-{run.id}.wandb").stat().st_size > 0
    assert len(list((run_dir / "files" / "media" / "images" / "validation").glob("panel_8_*.png"))) == 1


def test_missing_tracker_package_is_a_warning(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *args, **kwargs):
        if name.startswith("mlflow"):
            raise ImportError("no mlflow", name="mlflow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    with pytest.warns(UserWarning, match=r"luna-patches\[mlflow\]"):
        logger = RunLogger(tmp_path, CONFIG, tensorboard=False, mlflow=True)
    assert logger.trackers == []


@pytest.mark.slow
def test_cli_run_reports_each_epoch_and_fills_tensorboard(tiny_store, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = [a for o in TINY for a in ("--set", o)]
    res = CliRunner().invoke(main, ["run", "--dataset", tiny_store, "--out", str(out), *args,
                                    "--train-subsets", "0-7", "--val-subsets", "8", "--test-subsets", "9"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    err = res.stderr
    assert f"run directory: {out}" in err and f"tensorboard --logdir {out / 'tensorboard'}" in err
    lines = [ln for ln in err.splitlines() if " epoch " in ln and "ETA" in ln]
    assert len(lines) == 2 and "epoch 1/2  step 4  loss " in lines[0] and "epoch 2/2  step 8  loss " in lines[1]
    assert "val Dice " in lines[1] and "best " in lines[1] and "lr " in lines[1]
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("step/train_loss")] == [2, 4, 6, 8]
    assert [e.step for e in events.Scalars("epoch/val_dice")] == [4, 8]
    assert "validation/panel" in tags["images"]
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    session = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["model.channels"].string_value == "[4, 8]"
    assert session.session_start_info.hparams["data.batch_size"].number_value == 4
    assert events.Scalars("hparams/val_dice")[0].value == pytest.approx(
        max(e.value for e in events.Scalars("epoch/val_dice")))


def test_a_tracker_that_cannot_start_is_a_one_line_error(tmp_path, monkeypatch):
    from luna_prep.errors import InputError

    wandb = pytest.importorskip("wandb")

    def refuse(**kwargs):
        raise RuntimeError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    with pytest.raises(InputError, match=r"logging.wandb: .*no-tty.*WANDB_MODE=offline"):
        RunLogger(tmp_path, CONFIG, tensorboard=False, wandb=True)
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    with pytest.raises(InputError, match=r"logging.mlflow: no MLflow run at nosuchscheme://nowhere"):
        RunLogger(tmp_path, CONFIG, tensorboard=False, mlflow=True)
