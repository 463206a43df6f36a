"""A training run, start to end: assemble the parts, fit (resuming from last.pt), finalize with summary.json.

The steps live in their own modules: :mod:`~luna_train.training.assemble` (parts from the config),
:mod:`~luna_train.training.fit` (the epoch loop and checkpoints), :mod:`~luna_train.training.finalize`
(best model on val/test, summary.json).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from luna_train.config import TrainConfig, save_config
from luna_train.run_dir import CONFIG_FILE, absolute_location
from luna_train.training import distributed as D
from luna_train.training.assemble import assemble, open_logger, training_module
from luna_train.training.checkpoint import LAST, load_checkpoint, seed_everything
from luna_train.training.finalize import finalize
from luna_train.training.fit import Fit, Start, restore
from luna_train.training.loop import LoopState

__all__ = ["CONFIG_FILE", "run_training"]


def run_training(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, info: D.DistInfo | None = None,
                 on_step: Callable[[LoopState], None] | None = None) -> dict[str, Any] | None:
    """Train ``cfg`` into ``run_dir`` (resuming from last.pt when ``resume``) and return the summary dict.

    Raises :class:`~luna_train.training.loop.Interrupted` after ``train.stop_after_steps`` steps.
    The dataset is recorded as an absolute path (or URL), so the run directory works from anywhere.
    """
    t0 = time.perf_counter()
    cfg = replace(cfg, data=replace(cfg.data, dataset=absolute_location(cfg.data.dataset)))
    info = info or D.init_distributed()
    run_dir = Path(run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_FILE)
    D.barrier()
    seed_everything(cfg.train.seed)
    parts = assemble(cfg, info)
    start = restore(parts, load_checkpoint(run_dir / LAST, map_location="cpu"), info.rank) if resume else Start()
    net = training_module(parts.model, cfg, info)
    logger = open_logger(cfg, run_dir, info)
    if resume:
        logger.rewrite(start.state.history)
    fit = Fit(cfg, run_dir, info, parts, net, logger, start, on_step)
    outcome = fit.run()
    return finalize(cfg, run_dir, info, parts, logger, fit.state, outcome, t0)
