"""Per-step learning-rate schedule: linear warm-up, then cosine annealing to ``min_lr``, optionally with warm
restarts (SGDR)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule in optimizer steps."""

    base_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    kind: str = "cosine"  # cosine | constant
    restart_steps: int = 0  # > 0: first cosine period (SGDR)
    restart_mult: float = 1.0


def lr_at(step: int, spec: ScheduleSpec) -> float:
    """Learning rate for optimizer step ``step`` (0-based: the LR the step-th update uses).

    Warm-up rises linearly from base_lr / (warmup_steps + 1) to base_lr at step ``warmup_steps``;
    then cosine from base_lr down to min_lr at ``total_steps`` (or, with restarts, over periods of
    ``restart_steps * restart_mult**k`` steps, each restarting at base_lr).
    """
    if step < spec.warmup_steps:
        return spec.base_lr * (step + 1) / (spec.warmup_steps + 1)
    if spec.kind == "constant":
        return spec.base_lr
    if spec.kind != "cosine":
        raise ValueError(f"unknown schedule {spec.kind!r}; expected cosine or constant")
    t = step - spec.warmup_steps
    if spec.restart_steps > 0:
        period = float(spec.restart_steps)
        if spec.restart_mult < 1:  # the periods would sum to a finite step, and the LR be undefined after it
            raise ValueError(f"restart_mult must be >= 1, got {spec.restart_mult}")
        while t >= period:
            t -= period
            period *= spec.restart_mult
        frac = t / period
    else:
        span = max(spec.total_steps - spec.warmup_steps, 1)
        frac = min(t / span, 1.0)
    return spec.min_lr + 0.5 * (spec.base_lr - spec.min_lr) * (1.0 + math.cos(math.pi * frac))


class WarmupCosine:
    """Sets every param group's ``lr`` from :func:`lr_at`; call :meth:`step` after each optimizer step.

    Its state is just the step count (checkpoint-safe plain ints).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, spec: ScheduleSpec):
        self.optimizer, self.spec, self.last_step = optimizer, spec, 0
        self._apply()

    def _apply(self) -> None:
        lr = lr_at(self.last_step, self.spec)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": int(self.last_step)}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self._apply()


def build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg, steps_per_epoch: int, epochs: int) -> WarmupCosine:
    """The schedule of an :class:`~luna_train.config.OptimConfig` for ``epochs`` of ``steps_per_epoch``."""
    spec = ScheduleSpec(
        base_lr=float(optim_cfg.lr), min_lr=float(optim_cfg.min_lr),
        warmup_steps=int(round(optim_cfg.warmup_epochs * steps_per_epoch)), total_steps=int(epochs * steps_per_epoch),
        kind=optim_cfg.schedule, restart_steps=int(round(optim_cfg.restart_epochs * steps_per_epoch)),
        restart_mult=float(optim_cfg.restart_mult),
    )
    return WarmupCosine(optimizer, spec)
