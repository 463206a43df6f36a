"""The end of a run: the best checkpoint validated and tested, the validation panel, summary.json."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from luna_prep.report.figure import ImageScale
from luna_train.config import TrainConfig
from luna_train.run_dir import SUMMARY_FILE
from luna_train.training import distributed as D
from luna_train.training.assemble import RunParts
from luna_train.training.checkpoint import BEST, LAST, load_checkpoint
from luna_train.training.fit import FitOutcome
from luna_train.training.loop import LoopState, ValidationResult, validate
from luna_train.training.plots import PANEL_FILE, plot_panel
from luna_train.training.run_log import RunLogger
from luna_train.training.speed import plain_state_dict

__all__ = ["SUMMARY_FILE", "finalize", "summarize", "load_best_model"]


def load_best_model(parts: RunParts, run_dir: Path, info: D.DistInfo) -> None:
    """Put best.pt's weights (last.pt's if no epoch was validated) into ``parts.model`` on every rank."""
    best = None
    if info.is_main or info.world_size == 1:
        best = load_checkpoint(run_dir / BEST if (run_dir / BEST).exists() else run_dir / LAST, map_location="cpu")
    parts.model.load_state_dict(plain_state_dict(D.broadcast_object(best["model"] if best is not None else None)))


def summarize(cfg: TrainConfig, run_dir: Path, info: D.DistInfo, parts: RunParts, state: LoopState,
              outcome: FitOutcome, val: ValidationResult, test: ValidationResult, seconds: float,
              samples_per_rank: list[int]) -> dict[str, Any]:
    """The summary.json contents (NaN written as null)."""
    device = info.device
    summary = {
        "val_dice": val.dice, "test_dice": test.dice,
        "generalization": test.dice / val.dice if val.dice and not math.isnan(val.dice) else None,
        "val_pooled_dice": val.pooled_dice, "test_pooled_dice": test.pooled_dice,
        "val_loss": val.loss, "test_loss": test.loss,
        "epochs_run": state.epoch, "best_epoch": state.best_epoch + 1, "stopped_early": outcome.stopped_early,
        "steps": state.step, "seconds": round(seconds, 2),
        "n_train": len(parts.rows.train), "n_val": val.n_patches, "n_test": test.n_patches,
        "n_val_foreground": val.n_foreground, "n_test_foreground": test.n_foreground,
        "train_scales": sorted(int(s) for s in parts.rows.train["scale"].unique()), "eval_scale": cfg.data.eval_scale,
        "train_size": cfg.data.train_size, "model": cfg.model.name, "parameters": parts.n_params,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": info.world_size, "samples_per_rank": samples_per_rank, "rank_draws": outcome.rank_draws,
        "dataset": str(cfg.data.dataset), "run_dir": str(run_dir.resolve()),
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}


def finalize(cfg: TrainConfig, run_dir: Path, info: D.DistInfo, parts: RunParts, logger: RunLogger, state: LoopState,
             outcome: FitOutcome, t0: float) -> dict[str, Any]:
    """Validate and test the best model, plot its validation panel, write summary.json; returns the summary."""
    tc = cfg.train
    load_best_model(parts, run_dir, info)
    val = validate(parts.model, parts.val_loader, parts.loss_fn, info.device, tc.amp, tc.threshold,
                   cfg.logging.panel_patches)
    test = validate(parts.model, parts.test_loader, parts.loss_fn, info.device, tc.amp, tc.threshold, 0)
    if info.is_main and cfg.logging.plots:
        plot_panel(val.panel, run_dir / PANEL_FILE, f"validation, best model (epoch {state.best_epoch + 1}): "
                   f"ground truth (green), prediction (red); Dice {val.dice:.3f}",
                   ImageScale.of_attrs(parts.rows.attrs))
    samples = D.all_gather_object(state.samples_seen)
    summary = summarize(cfg, run_dir, info, parts, state, outcome, val, test, time.perf_counter() - t0, samples)
    if info.is_main:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    logger.log_scalars({k: summary[k] for k in ("test_dice", "test_pooled_dice") if summary[k] is not None},
                       state.step, "final/")
    logger.close()
    D.barrier()
    return summary
