"""A training run, start to end: assemble the parts, fit (resuming from last.pt), finalize with summary.json.

The steps live in their own modules: :mod:`~luna_train.training.assemble` (parts from the config),
:mod:`~luna_train.training.fit` (the epoch loop and checkpoints), :mod:`~luna_train.training.finalize`
(best model on val/test, summary.json).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from luna_prep.errors import InputError
from luna_prep.files import exclusive_lock
from luna_train.config import ConfigError, TrainConfig, save_config, to_dict
from luna_train.data.loader import stop_workers
from luna_train.run_dir import (
    CONFIG_FILE,
    SUMMARY_FILE,
    PreprocessingSpec,
    RunDir,
    absolute_location,
    refuse_other_store_on_resume,
)
from luna_train.stop_signal import stop_on_signals
from luna_train.training import distributed as D
from luna_train.training.assemble import assemble, open_logger, training_module
from luna_train.training.checkpoint import BEST, LAST, load_checkpoint, remove_partial_writes, seed_everything
from luna_train.training.finalize import finalize
from luna_train.training.fit import Fit, Start, restore
from luna_train.training.loop import LoopState
from luna_train.training.run_log import METRICS_FILE

__all__ = ["CONFIG_FILE", "run_training"]

log = logging.getLogger("luna_train")

LOCK_FILE = ".lock"


def run_training(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, info: D.DistInfo | None = None,
                 on_step: Callable[[LoopState], None] | None = None) -> dict[str, Any] | None:
    """Train ``cfg`` into ``run_dir`` (resuming from last.pt when ``resume``) and return the summary dict.

    Raises :class:`~luna_train.training.loop.Interrupted` after ``train.stop_after_steps`` steps, or once
    SIGTERM, SIGUSR1 or a first Ctrl-C came between the config's save and the last epoch's end (the step in
    flight finishes, last.pt is written first: :mod:`luna_train.stop_signal`; one that came while the parts
    were assembled writes the starting state).
    The dataset is recorded as an absolute path (or URL), so the run directory works from anywhere.
    """
    t0 = time.perf_counter()
    cfg = replace(cfg, data=replace(cfg.data, dataset=absolute_location(cfg.data.dataset)))
    info = info or D.init_distributed()
    run_dir = Path(run_dir)
    saved, where = _resume_state(run_dir) if resume else (None, run_dir / LAST)
    if saved is not None:
        _refuse_changed_geometry(saved["config"], cfg, where)
        _refuse_other_world_size(saved, info, where)
        refuse_other_store_on_resume(run_dir, RunDir(run_dir).dataset(str(saved["config"]["data"]["dataset"])),
                                     cfg.data.dataset)
        if _finished(saved["state"], cfg) and (run_dir / SUMMARY_FILE).is_file():
            # evaluating it again logged the final figures twice and lost the first run's rank_draws
            log.info("%s: the run has finished (%d epochs); its summary.json stands", run_dir, saved["state"]["epoch"])
            return json.loads((run_dir / SUMMARY_FILE).read_text())
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) if info.is_main else contextlib.nullcontext():
        return _train(cfg, run_dir, info, saved, on_step, t0)


def resume_checkpoint(run_dir: Path) -> Path | None:
    """What ``--resume`` continues from: last.pt, else best.pt (same contents, written just before last.pt: a kill
    between the two in the first epoch leaves best.pt alone), else nothing."""
    return next((run_dir / n for n in (LAST, BEST) if (run_dir / n).is_file()), None)


def _resume_state(run_dir: Path) -> tuple[dict, Path]:
    path = resume_checkpoint(run_dir) or run_dir / LAST
    saved = load_checkpoint(path, map_location="cpu")
    if path.name != LAST:
        log.warning("%s: no %s; resuming from %s (after epoch %d)", run_dir, LAST, path.name, saved["state"]["epoch"])
    return saved, path


def _refuse_other_world_size(saved: dict, info: D.DistInfo, where: Path) -> None:
    """Mid-epoch, each rank's share of the epoch's draws is where it stopped (draw k went to rank k % R): another
    number of ranks would train some draws twice and skip others. Between epochs it only loses exactness."""
    before, now = int(saved.get("world_size", 1)), info.world_size
    if before == now:
        return
    state = saved["state"]
    if state["step_in_epoch"] > 0:
        raise ConfigError(f"{where}: stopped in the middle of epoch {state['epoch'] + 1} on {before} rank(s); resume "
                          f"it on {before} (this is {now}): the epoch's draws are shared out by rank")
    log.warning("%s: trained on %d rank(s), resumed on %d: the run continues from epoch %d, but not as the same number "
                "of ranks would have trained it", where, before, now, state["epoch"] + 1)


def _finished(state: dict, cfg: TrainConfig) -> bool:
    """Whether a checkpoint's loop state has run all of ``cfg``'s epochs or spent its patience."""
    patience = cfg.train.patience
    return state["epoch"] >= cfg.train.epochs or (patience > 0 and state["bad_epochs"] >= patience)


def run_lock(run_dir: Path):
    """One run at a time in a run directory (``RUN/.lock``, :func:`~luna_prep.files.exclusive_lock`): two runs
    started into one ``--out`` wrote interleaved metrics and each other's checkpoints."""
    return exclusive_lock(run_dir / LOCK_FILE, lambda holder: InputError(
        f"{run_dir}: another luna-train run is writing this run directory (pid {holder}); wait for it to finish "
        "or pick another --out"))


def used_run_files(run_dir: Path) -> list[str]:
    """What in ``run_dir`` shows that a run trained there (a new run there would mix its records with them).
    TensorBoard events alone do not: the logger opens them before the first step, and a new run hides what an
    earlier start logged (``purge_step``)."""
    return [n for n in (LAST, BEST, METRICS_FILE, SUMMARY_FILE) if (run_dir / n).exists()]


def _train(cfg: TrainConfig, run_dir: Path, info: D.DistInfo, saved: dict | None,
           on_step: Callable[[LoopState], None] | None, t0: float) -> dict[str, Any] | None:
    if info.is_main:
        remove_partial_writes(run_dir)  # a checkpoint write that a kill cut short
        # stop_after_steps stops this invocation, it is no setting of the run: `--resume` from config.yaml with it
        # ran one more step each time and stopped again
        save_config(replace(cfg, train=replace(cfg.train, stop_after_steps=None)), run_dir / CONFIG_FILE)
    D.barrier()
    with stop_on_signals() as stop:  # from here: a signal while the parts are assembled stops before the first step
        seed_everything(cfg.train.seed)
        parts = assemble(cfg, info)
        if info.is_main:  # what predict needs of the store (spacing, HU window, dtype), from the start: a stopped
            # run's checkpoints are usable, and --resume compares a store with it
            RunDir(run_dir).write_preprocessing(
                PreprocessingSpec.from_store(parts.rows.attrs, cfg.data.eval_scale, cfg.data.train_size))
        start = restore(parts, saved, info.rank) if saved is not None else Start()
        net = training_module(parts.model, cfg, info)
        # TensorBoard hides what a killed run logged after its checkpoint (those steps are trained again), and what
        # an earlier start that wrote no checkpoint logged
        logger = open_logger(cfg, run_dir, info, purge_step=start.state.step + 1)
        if saved is not None:
            logger.rewrite(start.state.history)
        fit = Fit(cfg, run_dir, info, parts, net, logger, start, on_step, stop)
        try:
            outcome = fit.run()
        finally:
            stop_workers(parts.loader)
        if fit.stop_signalled():  # came as the workers stopped: last.pt holds the last epoch, --resume evaluates
            raise fit.signal_interruption("after the last epoch, before its evaluation")
    return finalize(cfg, run_dir, info, parts, logger, fit.state, outcome, t0)


# what a resumed run may not change: the model, what it sees (its input edge and the store scale resized to it),
# and which subsets validate and test it (the best checkpoint, the exported spec and the summary rest on them)
RESUME_FIXED = {"model": None, "split": None, "data": ("train_size", "eval_scale")}


def _refuse_changed_geometry(saved: dict[str, Any], cfg: TrainConfig, where: Path) -> None:
    now = to_dict(cfg)
    changed = []
    for section, keys in RESUME_FIXED.items():
        old, new = saved.get(section, {}), now.get(section, {})
        for key in keys or sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                changed.append(f"{section}.{key}: {old.get(key)!r} -> {new.get(key)!r}")
    if changed:
        raise ConfigError(f"{where}: --resume continues the run as it was trained; these settings changed: "
                          f"{'; '.join(changed)}. Start a new run (another --out) to train with them")
