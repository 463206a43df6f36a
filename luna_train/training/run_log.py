"""Run logging on rank 0: per-epoch ``metrics.csv``, and experiment trackers behind one small interface.

A :class:`Tracker` takes scalars, images and, at the end, the final metrics (with the config as
hyper-parameters). Three are built in: TensorBoard (default install), W&B (extra ``[wandb]``; its
mode comes from ``WANDB_MODE``, e.g. ``offline``) and MLflow (extra ``[mlflow]``; the server of
``MLFLOW_TRACKING_URI``, else a local file store in ``RUN_DIR/mlruns``). A tracker whose package is
missing is skipped with a warning.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

from luna_prep.errors import InputError

METRIC_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_dice", "val_pooled_dice", "lr", "seconds")
METRICS_FILE = "metrics.csv"
TB_DIR = "tensorboard"
MLFLOW_DIR = "mlruns"

log = logging.getLogger("luna_train")


class Tracker(Protocol):
    """Where a run's numbers go besides metrics.csv."""

    def scalars(self, values: dict[str, float], step: int) -> None: ...

    def image(self, tag: str, png: Path, step: int) -> None: ...

    def finish(self, metrics: dict[str, float]) -> None: ...


def flat_params(config: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """``{"optim.lr": 3e-4, ...}``: nested config dicts flattened, lists and None written as text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


class TensorBoardTracker:
    """Scalars, images (PNG) and, at the end, the config as hparams with the final metrics."""

    def __init__(self, log_dir: Path, config: dict, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self.params = flat_params(config)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def image(self, tag: str, png: Path, step: int) -> None:
        import matplotlib.image

        self.writer.add_image(tag, matplotlib.image.imread(str(png))[..., :3], step, dataformats="HWC")

    def finish(self, metrics: dict[str, float]) -> None:
        if metrics:
            self.writer.add_hparams(self.params, metrics, run_name=".")
        self.writer.flush()
        self.writer.close()


class WandbTracker:
    """A W&B run in the run directory; ``WANDB_MODE`` (online, offline, disabled) decides where it goes."""

    def __init__(self, run_dir: Path, config: dict, project: str, name: str):
        import wandb

        self.wandb = wandb
        try:
            self.run = wandb.init(project=project, name=name, config=config, dir=str(run_dir))
        except Exception as exc:  # no login, no network: the user's to fix, not a traceback
            raise InputError(f"logging.wandb: W&B could not start a run ({type(exc).__name__}: {exc}); log in with "
                             "`wandb login`, or set WANDB_MODE=offline (or disabled)") from exc

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, tag: str, png: Path, step: int) -> None:
        self.run.log({tag: self.wandb.Image(str(png))}, step=step)

    def finish(self, metrics: dict[str, float]) -> None:
        self.run.summary.update(metrics)
        self.run.finish()


class MlflowTracker:
    """An MLflow run: config as params, scalars as metrics, images as artifacts."""

    def __init__(self, run_dir: Path, config: dict, experiment: str, name: str):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / MLFLOW_DIR).resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps the file store only on request
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
            self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
        except Exception as exc:  # an unreachable server, a store this mlflow cannot open
            raise InputError(f"logging.mlflow: no MLflow run at {uri} ({type(exc).__name__}: {exc}); check "
                             "MLFLOW_TRACKING_URI, or unset it to log to RUN_DIR/mlruns") from exc
        params = [Param(k, str(v)[:6000]) for k, v in flat_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def image(self, tag: str, png: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(png), artifact_path=tag)

    def finish(self, metrics: dict[str, float]) -> None:
        self.scalars(metrics, 0)
        self.client.set_terminated(self.run_id)


def _optional(kind: str, make) -> Tracker | None:
    """``make()``, or None with a warning naming the extra when its package is not installed."""
    try:
        return make()
    except ImportError as exc:
        warnings.warn(f"logging.{kind} is set but {exc.name or kind} is not installed "
                      f"(pip install 'luna-patches[{kind}]'); skipping it", stacklevel=2)
        return None


class RunLogger:
    """Writes epoch rows to metrics.csv and numbers to the trackers; a no-op on ranks other than 0."""

    def __init__(self, run_dir: str | Path, config: dict, enabled: bool = True, tensorboard: bool = True,
                 wandb: bool = False, wandb_project: str = "luna-train", name: str | None = None,
                 mlflow: bool = False, mlflow_experiment: str = "luna-train", purge_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.trackers: list[Tracker] = []
        self.best_val_dice = math.nan
        self.final: dict[str, float] = {}
        if not enabled:
            return
        name = name or self.run_dir.name
        if tensorboard:
            self.trackers.append(TensorBoardTracker(self.run_dir / TB_DIR, config, purge_step))
        if wandb:
            self.trackers.append(_optional("wandb", lambda: WandbTracker(self.run_dir, config, wandb_project, name)))
        if mlflow:
            self.trackers.append(_optional("mlflow", lambda: MlflowTracker(self.run_dir, config, mlflow_experiment,
                                                                           name)))
        self.trackers = [t for t in self.trackers if t is not None]

    def rewrite(self, history: list[dict]) -> None:
        """Replace metrics.csv with ``history`` (on resume: rows after the checkpoint are dropped)."""
        if not self.enabled:
            return
        with open(self.run_dir / METRICS_FILE, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for row in history:
                w.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
        self._note_best(history)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch row to metrics.csv and send its numbers to the trackers."""
        if not self.enabled:
            return
        path = self.run_dir / METRICS_FILE
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
        self._note_best([row])
        self.log_scalars({k: v for k, v in row.items() if k not in ("epoch", "step")}, int(row["step"]), "epoch/")

    def log_scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        """Finite numbers of ``values`` to every tracker (``final/...`` ones are also kept for :meth:`close`)."""
        if not self.enabled:
            return
        clean = {prefix + k: float(v) for k, v in values.items()
                 if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
        if prefix == "final/":
            self.final.update(clean)
        for tracker in self.trackers:
            tracker.scalars(clean, step)

    def log_image(self, tag: str, png: str | Path, step: int) -> None:
        """A PNG the run wrote (the validation panel) to every tracker."""
        if self.enabled:
            for tracker in self.trackers:
                tracker.image(tag, Path(png), step)

    def final_metrics(self) -> dict[str, float]:
        """What the hparams view compares runs by: the best validation Dice and the final test numbers."""
        out = {"hparams/val_dice": self.best_val_dice} if not math.isnan(self.best_val_dice) else {}
        out.update({"hparams/" + k.removeprefix("final/"): v for k, v in self.final.items()})
        return out

    def close(self) -> None:
        metrics = self.final_metrics()
        for tracker in self.trackers:
            tracker.finish(metrics)
        self.trackers = []

    def _note_best(self, rows: list[dict]) -> None:
        for row in rows:
            v = row.get("val_dice")
            if isinstance(v, (int, float)) and not math.isnan(v) and not v <= self.best_val_dice:
                self.best_val_dice = float(v)


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
