"""Train and validation loops: one training epoch (resumable mid-epoch), and validation with Dice metrics."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from luna_train.data.dataset import decode_batch
from luna_train.evaluation.metrics import batch_counts, binarize, dice_from_counts
from luna_train.nets.losses import per_sample_soft_dice_loss
from luna_train.nets.models import main_output
from luna_train.training import distributed as D
from luna_train.training.speed import StepOptions, format_batch


class BatchLost(RuntimeError):
    """A batch could not be fetched after a stop was asked for (the loader's workers ended: they ignore the stop
    signals, but not SIGKILL or the OOM killer); the loop state is that of the last finished step, its sums
    flushed."""


class Interrupted(RuntimeError):
    """Raised after ``train.stop_after_steps`` steps or a stop signal (last.pt is written first); the command's
    exit status is ``exit_status`` (3, or 128 + the signal's number)."""

    def __init__(self, message: str, exit_status: int = 3):
        super().__init__(message)
        self.exit_status = exit_status


@dataclass
class LoopState:
    """Counters and early-stopping state of a run; all plain values (stored in checkpoints)."""

    epoch: int = 0  # current epoch, 0-based
    step: int = 0  # optimizer steps done in the whole run
    step_in_epoch: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0  # train loss summed over the current epoch's batches
    epoch_seconds: float = 0.0  # training seconds spent in the current epoch before a resume
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)  # one metrics row per finished epoch
    samples_seen: int = 0  # items this rank trained on (whole run)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict) -> LoopState:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def amp_context(device: torch.device, amp: str):
    """bf16 / fp16 autocast on CUDA; nothing on the CPU or with ``amp: none``."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"train.amp must be bf16, fp16 or none, not {amp!r}")
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 on CUDA (bf16 needs none); its state is checkpointed anyway."""
    return torch.amp.GradScaler(device.type, enabled=(device.type == "cuda" and amp == "fp16"))


@dataclass
class TrainParts:
    """What a training epoch needs."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    sampler: Any  # WeightedPatchSampler
    loader: Any
    device: torch.device
    amp: str = "none"
    grad_clip: float = 0.0
    batch_size: int = 8
    augment_on_device: Callable[[dict, int, int], dict] | None = None  # (batch, epoch, step) -> batch
    hard_mining: bool = False
    options: StepOptions = field(default_factory=StepOptions)
    # after which steps (run-wide count) the device-side sums come to the host; None = every step
    sync_at: Callable[[int], bool] | None = None
    # whether a stop was asked for: a batch that then cannot be fetched ends the epoch with BatchLost
    stopping: Callable[[], bool] | None = None


class DeviceSums:
    """The epoch's train loss and hard-mining scores, summed where they are computed and brought to
    the host only at sync points: a ``float(loss)`` every step would stall the GPU's queue each step."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.positions: list[int] = []
        self.scores: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor, positions: list[int] | None = None, scores: torch.Tensor | None = None):
        self.loss += loss.detach().double()
        if scores is not None:
            self.positions.extend(positions or [])
            self.scores.append(scores.detach().float())

    def flush(self, state: LoopState, hard: dict | None) -> None:
        """Add what was summed since the last flush to ``state.loss_sum`` (and ``hard``); one sync."""
        state.loss_sum += float(self.loss)
        self.loss.zero_()
        if hard is not None and self.scores:
            hard["positions"].extend(self.positions)
            hard["scores"].extend(float(s) for s in torch.cat(self.scores).cpu())
        self.positions, self.scores = [], []


def train_step(parts: TrainParts, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """One optimizer step on a decoded batch; returns (loss, model output), both still on the device."""
    model = parts.model
    image, label = format_batch(image, parts.options), format_batch(label, parts.options)
    with amp_context(parts.device, parts.amp):
        out = model(image)
        loss = parts.loss_fn(out, label)
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scaler.scale(loss).backward()
    if parts.grad_clip > 0:
        parts.scaler.unscale_(parts.optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), parts.grad_clip)
    parts.scaler.step(parts.optimizer)
    parts.scaler.update()
    parts.scheduler.step()
    return loss, out


def train_epoch(parts: TrainParts, state: LoopState, *, restore_rng: Callable[[], None] | None = None,
                on_step: Callable[[LoopState], None] | None = None, progress: bool = False,
                hard: dict | None = None, seen: list | None = None) -> float:
    """Train one epoch (or the rest of it after a resume); returns the epoch's mean train loss.

    ``restore_rng`` runs after the loader's iterator is created (creating one draws from torch's
    RNG), so a resumed run continues the exact random stream. ``on_step`` runs after every
    optimizer step (checkpointing, interruption); ``state.loss_sum`` and ``hard`` are up to date
    after the steps ``parts.sync_at`` names and at the epoch's end. ``hard`` collects (positions,
    scores) for hard-negative mining when ``parts.hard_mining``; ``seen`` the positions trained on.
    """
    from tqdm import tqdm

    parts.sampler.set_epoch(state.epoch)  # keeps a resumed position
    n_batches = math.ceil(len(parts.sampler) / parts.batch_size)
    n_batches = D.all_reduce_min(n_batches, parts.device)
    iterator = iter(parts.loader)
    if restore_rng is not None:
        restore_rng()
    parts.model.train()
    sums = DeviceSums(parts.device)
    mining = parts.hard_mining and hard is not None
    bar = tqdm(total=n_batches, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}", disable=not progress,
               leave=False, dynamic_ncols=True)
    start = time.perf_counter() - state.epoch_seconds
    while state.step_in_epoch < n_batches:
        try:
            batch = next(iterator)
        except Exception as exc:
            if parts.stopping is None or not parts.stopping():
                raise
            sums.flush(state, hard)
            state.epoch_seconds = time.perf_counter() - start
            raise BatchLost(f"no batch after step {state.step}: {exc}") from exc
        image, label = decode_batch(batch, parts.device)
        if parts.augment_on_device is not None:
            aug = parts.augment_on_device({"image": image, "label": label}, state.epoch, state.step)
            image, label = aug["image"], aug["label"]
        loss, out = train_step(parts, image, label)
        positions = batch["position"].tolist() if (mining or seen is not None) else None
        sums.add(loss, positions, per_sample_soft_dice_loss(main_output(out).detach(), label) if mining else None)
        if seen is not None:
            seen.extend(positions)
        state.step += 1
        state.step_in_epoch += 1
        state.samples_seen += int(image.shape[0])
        bar.update(1)
        if parts.sync_at is None or parts.sync_at(state.step) or state.step_in_epoch == n_batches:
            sums.flush(state, hard)
            state.epoch_seconds = time.perf_counter() - start
            bar.set_postfix(loss=f"{state.loss_sum / state.step_in_epoch:.4f}",
                            lr=f"{parts.scheduler.get_last_lr()[0]:.2e}")
        if on_step is not None:
            on_step(state)
    bar.close()
    return state.loss_sum / max(state.step_in_epoch, 1)


@dataclass
class ValidationResult:
    loss: float
    dice: float  # mean per-patch Dice over patches with a nodule
    pooled_dice: float  # voxel-pooled Dice over all patches
    n_patches: int
    n_foreground: int
    panel: list[dict] = field(default_factory=list)  # a few patches' slices (this rank) for plots


@torch.no_grad()
def validate(model: nn.Module, loader, loss_fn: nn.Module, device: torch.device, amp: str = "none",
             threshold: float = 0.5, panel_patches: int = 0) -> ValidationResult:
    """Loss, per-patch Dice (foreground patches) and pooled Dice of ``model`` on ``loader``, summed over ranks.

    Masks are :func:`~luna_train.evaluation.metrics.binarize` (``prob >= threshold``). Each rank
    evaluates its own share of the patches (its loader); the sums are all-reduced, so every rank
    gets the same numbers. Pass the bare module (not DDP) as ``model``.
    """
    model.eval()
    sums = torch.zeros(7, dtype=torch.float64)  # loss*n, n, dice_fg_sum, n_fg, tp, fp, fn
    panel: list[dict] = []
    for batch in loader:
        image, label = decode_batch(batch, device)
        with amp_context(device, amp):
            logits = main_output(model(image))
        logits = logits.float()
        n = image.shape[0]
        sums[0] += float(loss_fn(logits, label)) * n
        sums[1] += n
        pred = binarize(torch.sigmoid(logits), threshold)
        tp, fp, fn = (c.double() for c in batch_counts(pred, label > 0.5))
        dice = dice_from_counts(tp, fp, fn)
        fg = (tp + fn) > 0
        sums[2] += float(dice[fg].sum())
        sums[3] += int(fg.sum())
        sums[4:7] += torch.stack([tp.sum(), fp.sum(), fn.sum()]).cpu()
        for b in range(n):
            if len(panel) >= panel_patches:
                break
            if bool(fg[b]):
                panel.append(_panel_item(image[b, 0], label[b, 0], pred[b, 0], float(dice[b]),
                                         int(batch["position"][b])))
    total = D.all_reduce_sum(sums).tolist()
    n_all, n_fg = int(total[1]), int(total[3])
    return ValidationResult(
        loss=total[0] / n_all if n_all else float("nan"),
        dice=total[2] / n_fg if n_fg else float("nan"),
        pooled_dice=dice_from_counts(*total[4:7]) if n_all else float("nan"),
        n_patches=n_all, n_foreground=n_fg, panel=panel,
    )


def _panel_item(image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, dice: float, position: int) -> dict:
    """The axial slice with the most ground truth of one patch, as numpy arrays."""
    z = int(label.flatten(1).sum(1).argmax())
    return {"image": image[z].float().cpu().numpy(), "label": label[z].cpu().numpy() > 0.5,
            "pred": pred[z].cpu().numpy(), "dice": dice, "position": position, "slice": z}


def gather_hardness(hard: dict) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's (positions, scores) of the epoch, concatenated in rank order."""
    parts = D.all_gather_object((hard["positions"], hard["scores"]))
    positions = np.asarray([p for ps, _ in parts for p in ps], dtype=np.int64)
    scores = np.asarray([s for _, ss in parts for s in ss], dtype=np.float64)
    return positions, scores
