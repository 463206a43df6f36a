"""Run logging on rank 0: per-epoch ``metrics.csv``, TensorBoard events, optional offline wandb."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path
from typing import Any

METRIC_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_dice", "val_pooled_dice", "lr", "seconds")
METRICS_FILE = "metrics.csv"
TB_DIR = "tensorboard"


class RunLogger:
    """Writes epoch rows and scalars; a no-op object on ranks other than 0 (``enabled=False``)."""

    def __init__(self, run_dir: str | Path, config: dict, enabled: bool = True, tensorboard: bool = True,
                 wandb: bool = False, wandb_project: str = "luna-train", name: str | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.writer = None
        self.wandb_run = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir / TB_DIR))
        if wandb:
            try:
                import wandb as wb
            except ImportError:
                warnings.warn("logging.wandb is set but wandb is not installed; skipping it")
            else:
                self.wandb_run = wb.init(project=wandb_project, name=name or self.run_dir.name, config=config,
                                         dir=str(self.run_dir), mode="offline")

    def rewrite(self, history: list[dict]) -> None:
        """Replace metrics.csv with ``history`` (on resume: rows after the checkpoint are dropped)."""
        if not self.enabled:
            return
        with open(self.run_dir / METRICS_FILE, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            w.writeheader()
            for row in history:
                w.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch row to metrics.csv and send its numbers to TensorBoard / wandb."""
        if not self.enabled:
            return
        path = self.run_dir / METRICS_FILE
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
        self.log_scalars({k: v for k, v in row.items() if k not in ("epoch", "step")}, int(row["step"]), "epoch/")

    def log_scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        if not self.enabled:
            return
        clean = {prefix + k: float(v) for k, v in values.items()
                 if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
        if self.writer is not None:
            for k, v in clean.items():
                self.writer.add_scalar(k, v, step)
        if self.wandb_run is not None:
            self.wandb_run.log(clean, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
