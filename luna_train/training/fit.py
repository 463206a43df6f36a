"""The epoch loop of a run: train, validate, keep the best, checkpoint, stop early; resumable from last.pt.

A run's state lives in :class:`Start` (loop counters, hard-mining scores, RNG to restore) and in
the parts' own state dicts; :func:`checkpoint_payload` and :func:`restore` are the two directions
of the checkpoint contents (schema: :mod:`luna_train.training.checkpoint`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from luna_prep.report.figure import ImageScale
from luna_train.config import TrainConfig, to_dict
from luna_train.data.sampler import WeightedPatchSampler
from luna_train.stop_signal import StopRequest
from luna_train.training import distributed as D
from luna_train.training.assemble import RunParts
from luna_train.training.checkpoint import BEST, LAST, rng_state, save_checkpoint, set_rng_state
from luna_train.training.loop import (
    BatchLost,
    Interrupted,
    LoopState,
    TrainParts,
    ValidationResult,
    gather_hardness,
    train_epoch,
    validate,
)
from luna_train.training.plots import CURVES_FILE, PANEL_FILE, plot_curves, plot_panel
from luna_train.training.run_log import RunLogger
from luna_train.training.speed import plain_state_dict

log = logging.getLogger("luna_train")


def _no_hardness() -> dict:
    return {"positions": [], "scores": []}


@dataclass
class Start:
    """Where the loop starts: fresh, or what last.pt holds for this rank."""

    state: LoopState = field(default_factory=LoopState)
    hard: dict = field(default_factory=_no_hardness)  # hard-mining (positions, scores) of the current epoch
    rng: dict | None = None  # RNG states to restore once the first loader iterator exists


@dataclass
class FitOutcome:
    stopped_early: bool
    rank_draws: dict | None  # evidence that ranks trained on disjoint shares (first full epoch)


def checkpoint_payload(parts: RunParts, state: LoopState, cfg: TrainConfig, per_rank: list, world_size: int) -> dict:
    """The contents of last.pt / best.pt (kind and version are stamped by save_checkpoint)."""
    return {"model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(), "scaler": parts.scaler.state_dict(),
            "sampler": parts.sampler.state_dict(consumed=state.step_in_epoch * cfg.data.batch_size),
            "state": state.to_dict(), "per_rank": per_rank, "config": to_dict(cfg), "world_size": world_size}


def restore(parts: RunParts, ckpt: dict, rank: int) -> Start:
    """Load a checkpoint's states into ``parts``; this rank's counters, hard-mining scores and RNG come back."""
    parts.model.load_state_dict(plain_state_dict(ckpt["model"]))
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    parts.scaler.load_state_dict(ckpt["scaler"])
    state = LoopState.from_dict(ckpt["state"])
    parts.sampler.load_state_dict(ckpt["sampler"])
    mine = ckpt["per_rank"][min(rank, len(ckpt["per_rank"]) - 1)]
    state.samples_seen = mine["samples_seen"]
    # each rank's own partial epoch (the state holds rank 0's); checkpoints before these keys keep rank 0's
    state.loss_sum = float(mine.get("loss_sum", state.loss_sum))
    state.epoch_seconds = float(mine.get("epoch_seconds", state.epoch_seconds))
    return Start(state=state, hard=mine["hard"], rng=mine["rng"])


def check_partition(sampler: WeightedPatchSampler, seen: list[int], info: D.DistInfo) -> dict:
    """Evidence that each rank trained on its own share of one epoch's draw list (draw k goes to rank k % R)."""
    all_seen = D.all_gather_object(seen)
    positions, _ = sampler.epoch_draws()
    return {"epoch": sampler.epoch + 1, "items_per_rank": [len(s) for s in all_seen],
            "disjoint_shares_match": all(list(map(int, positions[r::info.world_size][:len(s)])) == list(s)
                                         for r, s in enumerate(all_seen))}


class Fit:
    """Runs the epochs of ``cfg.train`` from ``start``; ``net`` is what trains (DDP / compiled ``parts.model``)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, info: D.DistInfo, parts: RunParts, net: nn.Module,
                 logger: RunLogger, start: Start, on_step: Callable[[LoopState], None] | None = None,
                 stop: StopRequest | None = None):
        self.cfg, self.run_dir, self.info, self.parts, self.logger = cfg, run_dir, info, parts, logger
        self.state, self.hard, self.pending_rng = start.state, start.hard, start.rng
        self.on_step = on_step
        self.stop = stop or StopRequest()  # set by a stop signal (luna_train.stop_signal)
        self.stop_at_sync = False  # the request as the step's sync decision saw it (one value for both decisions)
        # (train-loss sum, step) at the last logged step: the logged loss is the mean since then
        self.loss_mark = (start.state.loss_sum, start.state.step)
        self.epoch_walls: list[float] = []  # wall seconds of the epochs run by this process (for the ETA)
        tc = cfg.train
        self.train_parts = TrainParts(
            model=net, loss_fn=parts.loss_fn, optimizer=parts.optimizer, scheduler=parts.scheduler,
            scaler=parts.scaler, sampler=parts.sampler, loader=parts.loader, device=info.device, amp=tc.amp,
            grad_clip=cfg.optim.grad_clip, batch_size=cfg.data.batch_size, augment_on_device=parts.augment_on_device,
            hard_mining=cfg.sampler.hard_mining_every > 0, options=parts.options, sync_at=self.sync_due,
            stopping=None if info.distributed else lambda: self.stop.requested)

    # hooks of train_epoch -------------------------------------------------------------------------

    def restore_rng(self) -> None:
        """Put back the RNG states of the checkpoint (once the loader's iterator exists)."""
        if self.pending_rng is not None:
            set_rng_state(self.pending_rng)

    def sync_due(self, step: int) -> bool:
        """Whether the loss sums come to the host after ``step``: a logged, checkpointed or final step, or a
        stop signal's."""
        self.stop_at_sync = self.stop.requested
        return self._sync_point(step) or self.stop_at_sync

    def _sync_point(self, step: int) -> bool:
        """The steps every rank syncs after (the same on each): logged, checkpointed or final ones."""
        every, stop = self.cfg.train.checkpoint_every_steps, self.cfg.train.stop_after_steps
        return (step % self.cfg.logging.step_every == 0 or bool(every and step % every == 0)
                or (stop is not None and step >= stop))

    def after_step(self, st: LoopState) -> None:
        """Checkpoint every ``train.checkpoint_every_steps``; raise Interrupted after ``train.stop_after_steps``
        or once a stop signal came (after writing last.pt)."""
        every, stop = self.cfg.train.checkpoint_every_steps, self.cfg.train.stop_after_steps
        stopping = stop is not None and st.step >= stop
        signalled = self.stop_signalled(st.step)
        self._log_step(st)
        if (every and st.step % every == 0) or stopping or signalled:
            self.save([LAST])
        if self.on_step is not None:
            self.on_step(st)
        if signalled:
            raise self.signal_interruption(f"after step {st.step}")
        if stopping:
            raise Interrupted(f"stopped after {st.step} steps (train.stop_after_steps); resume with --resume")

    def stop_signalled(self, step: int | None = None) -> bool:
        """Whether a stop signal came to any rank: after ``step`` (None: at the end of an epoch or of the epochs).
        In a single process as the step's sync decision saw it (a signal landing between the two decisions would
        checkpoint unflushed sums); with several ranks only after the steps all of them sync after, so that all
        stop together."""
        if not self.info.distributed:
            return self.stop_at_sync if step is not None else self.stop.requested
        if step is not None and not self._sync_point(step):
            return False
        return float(D.all_reduce_sum(torch.tensor([float(self.stop.requested)]))[0]) > 0

    def signal_interruption(self, where: str) -> Interrupted:
        by = self.stop.name or "a stop signal to another rank"
        return Interrupted(f"stopped by {by} {where}; resume with --resume",
                           exit_status=self.stop.exit_status if self.stop.requested else 143)

    # checkpoints ----------------------------------------------------------------------------------

    def save(self, names: list[str]) -> None:
        """Write the run's state to each of ``names`` in the run directory (rank 0; every rank sends its share)."""
        per_rank = D.all_gather_object({"rng": rng_state(), "hard": {k: list(v) for k, v in self.hard.items()},
                                        "samples_seen": self.state.samples_seen, "loss_sum": self.state.loss_sum,
                                        "epoch_seconds": self.state.epoch_seconds})
        if not self.info.is_main:
            return
        payload = checkpoint_payload(self.parts, self.state, self.cfg, per_rank, self.info.world_size)
        # last.pt last: it is what --resume trusts, so a kill between the two writes must not leave a last.pt
        # that names an epoch as best whose weights best.pt does not hold
        for name in sorted(names, key=lambda n: n == LAST):
            save_checkpoint(self.run_dir / name, payload)

    # the loop -------------------------------------------------------------------------------------

    def run(self) -> FitOutcome:
        """Epochs until ``train.epochs`` or ``train.patience`` epochs without a better validation Dice."""
        tc, ddp_check = self.cfg.train, None
        if self._patience_spent():  # a resumed run that had stopped early stays stopped
            return FitOutcome(stopped_early=True, rank_draws=None)
        if self.stop_signalled():  # came while the run was assembled: its starting state is what --resume needs
            if self.pending_rng is None:  # a resumed run's checkpoint already holds it (with the RNG to put back)
                self.save([LAST])
            raise self.signal_interruption(f"before step {self.state.step + 1}")
        while self.state.epoch < tc.epochs:
            e, t_epoch = self.state.epoch, time.perf_counter()
            check = ddp_check is None and self.state.step_in_epoch == 0
            train_loss, seen = self._train(collect_seen=check)
            if check:
                ddp_check = check_partition(self.parts.sampler, seen, self.info)
            train_loss = float(D.all_reduce_sum(torch.tensor([train_loss], dtype=torch.float64))[0])
            train_loss /= self.info.world_size
            self._mine_hardness(e)
            res = self._validate_if_due(e)
            improved = self._update_best(res, e)
            self._log_epoch(e, train_loss, res)
            self.save([LAST, BEST] if improved or self.state.best_epoch < 0 else [LAST])
            self._plot(e, improved, res)
            self._report(time.perf_counter() - t_epoch)
            if self.stop_signalled():  # came during validation, or at the epoch's last step
                raise self.signal_interruption(f"at the end of epoch {e + 1}")
            if self._patience_spent():
                return FitOutcome(stopped_early=True, rank_draws=ddp_check)
        return FitOutcome(stopped_early=False, rank_draws=ddp_check)

    def _patience_spent(self) -> bool:
        patience = self.cfg.train.patience
        return patience > 0 and self.state.bad_epochs >= patience

    def _train(self, collect_seen: bool) -> tuple[float, list[int]]:
        """One epoch (or its rest after a resume): this rank's mean loss and the positions trained on."""
        seen: list[int] | None = [] if collect_seen else None
        try:
            loss = train_epoch(self.train_parts, self.state,
                               restore_rng=self.restore_rng if self.pending_rng is not None else None,
                               on_step=self.after_step, progress=self.cfg.logging.progress and self.info.is_main,
                               hard=self.hard, seen=seen)
        except BatchLost as lost:  # the loader's workers ended after the stop signal (killed some other way)
            self.save([LAST])
            raise self.signal_interruption(f"after step {self.state.step} (the loader's workers ended too)") from lost
        self.pending_rng = None
        return loss, seen or []

    def _mine_hardness(self, epoch: int) -> None:
        if self.parts.sampler.hard_mining_due(epoch):
            self.parts.sampler.update_hardness(*gather_hardness(self.hard))
        self.hard = _no_hardness()

    def _validate_if_due(self, epoch: int) -> ValidationResult | None:
        tc = self.cfg.train
        if (epoch + 1) % max(tc.val_every, 1) != 0 and epoch + 1 != tc.epochs:
            return None
        return validate(self.parts.model, self.parts.val_loader, self.parts.loss_fn, self.info.device, tc.amp,
                        tc.threshold, self.cfg.logging.panel_patches)

    def _update_best(self, res: ValidationResult | None, epoch: int) -> bool:
        """Record a better validation Dice (per-patch, else pooled); count the epochs since the best."""
        state, improved = self.state, False
        if res is not None:
            metric = res.dice if not math.isnan(res.dice) else res.pooled_dice
            if not math.isnan(metric) and metric > state.best_metric:
                state.best_metric, state.best_epoch, improved = float(metric), epoch, True
        if state.best_epoch >= 0:
            state.bad_epochs = epoch - state.best_epoch
        else:  # no usable metric yet: the epochs count from the first validation, none before it
            validated = [r["epoch"] - 1 for r in state.history
                         if any(_finite(r.get(k)) for k in ("val_loss", "val_dice", "val_pooled_dice"))]
            first = min(validated + ([epoch] if res is not None else []), default=None)
            state.bad_epochs = 0 if first is None else epoch - first + 1
        return improved

    def _log_epoch(self, epoch: int, train_loss: float, res: ValidationResult | None) -> None:
        """Append the epoch's metrics row and move the counters to the next epoch."""
        state, nan = self.state, float("nan")
        row = {"epoch": epoch + 1, "step": state.step, "train_loss": train_loss,
               "val_loss": res.loss if res else nan, "val_dice": res.dice if res else nan,
               "val_pooled_dice": res.pooled_dice if res else nan,
               "lr": self.parts.scheduler.get_last_lr()[0], "seconds": state.epoch_seconds}
        state.history.append(row)
        self.logger.log_epoch(row)
        state.epoch, state.step_in_epoch, state.loss_sum, state.epoch_seconds = epoch + 1, 0, 0.0, 0.0
        self.loss_mark = (0.0, state.step)

    def _log_step(self, st: LoopState) -> None:
        """This rank's mean train loss of the steps since the last log, and the learning rate, every
        ``logging.step_every`` steps (the loss sums are on the host then, see :meth:`sync_due`)."""
        if st.step % self.cfg.logging.step_every != 0:
            return
        mark_sum, mark_step = self.loss_mark
        loss = (st.loss_sum - mark_sum) / max(st.step - mark_step, 1)
        self.loss_mark = (st.loss_sum, st.step)
        self.logger.log_scalars({"train_loss": loss, "lr": self.parts.scheduler.get_last_lr()[0]}, st.step, "step/")

    def _report(self, wall: float) -> None:
        """One persistent line per epoch on the ``luna_train`` logger (rank 0): losses, Dice, best, lr, time, ETA."""
        if not self.info.is_main:
            return
        self.epoch_walls.append(wall)
        log.info(epoch_line(self.state.history[-1], self.cfg.train.epochs, self.state.best_metric,
                            self.state.best_epoch, wall, sum(self.epoch_walls) / len(self.epoch_walls)))

    def _plot(self, epoch: int, improved: bool, res: ValidationResult | None) -> None:
        if not (self.info.is_main and self.cfg.logging.plots):
            return
        plot_curves(self.state.history, self.run_dir / CURVES_FILE, self.state.best_epoch)
        if improved and res is not None:
            panel = plot_panel(res.panel, self.run_dir / PANEL_FILE, f"validation, epoch {epoch + 1}: ground truth "
                               f"(green), prediction (red); Dice {res.dice:.3f}",
                               ImageScale.of_attrs(self.parts.rows.attrs))
            self.logger.log_image("validation/panel", panel, self.state.step)


def epoch_line(row: dict, epochs: int, best: float, best_epoch: int, wall: float, mean_wall: float) -> str:
    """``epoch 3/20  step 120  loss 0.4123  val Dice 0.512  best 0.530 (epoch 2)  lr 2.9e-04  41.2 s  ETA 0:11:40``."""
    dice = row.get("val_dice", math.nan)
    val = "-" if math.isnan(dice) else f"{dice:.4f}"
    best_text = "-" if best_epoch < 0 else f"{best:.4f} (epoch {best_epoch + 1})"
    eta = round(mean_wall * (epochs - int(row["epoch"])))
    return (f"epoch {int(row['epoch'])}/{epochs}  step {int(row['step'])}  loss {row['train_loss']:.4f}  "
            f"val Dice {val}  best {best_text}  lr {row['lr']:.2e}  {wall:.1f} s  "
            f"ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}")


def _finite(value) -> bool:
    """Whether a metrics-row value is a finite number (a validated epoch's; NaN or None where none ran)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
