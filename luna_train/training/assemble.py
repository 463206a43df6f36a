"""The parts of a training run, built from its config: rows, loaders, model, loss, optimizer, schedule, logger.

Build order matters for exact resume: :func:`assemble` creates the parts in a fixed order after
the seed is set (the model's initialization draws from torch's RNG), and nothing here draws
from the global RNG afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from luna_train.config import TrainConfig, to_dict
from luna_train.data.augment import AugmentConfig, augment_batch_on_device, batch_generator, build_train_transform
from luna_train.data.dataset import PatchDataset
from luna_train.data.loader import make_loader
from luna_train.data.sampler import WeightedPatchSampler
from luna_train.data.splits import RunData, select_rows
from luna_train.nets.losses import build_loss
from luna_train.nets.models import build_model, count_parameters
from luna_train.training import distributed as D
from luna_train.training.loop import make_scaler
from luna_train.training.run_log import RunLogger
from luna_train.training.schedule import build_scheduler
from luna_train.training.speed import StepOptions, build_optimizer, compile_module, format_model


@dataclass
class RunParts:
    """Everything a run trains and validates with (the bare model: checkpoints and validation use it)."""

    rows: RunData
    sampler: WeightedPatchSampler
    loader: Any  # training DataLoader over ``sampler``
    val_loader: Any  # this rank's share of the validation rows
    test_loader: Any  # this rank's share of the test rows
    model: nn.Module
    n_params: int
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    augment_on_device: Callable[[dict, int, int], dict] | None  # (batch, epoch, step) -> batch
    options: StepOptions  # compile / channels-last / fused optimizer, resolved for the device


@dataclass(frozen=True)
class DeviceAugment:
    """Flip / rot90 / intensity augmentation of whole batches where they lie, seeded per (seed, rank, epoch, step).

    The random choices are drawn on the CPU (a handful of numbers per item): drawn on the GPU, reading
    them back would stall the GPU's queue at every step. The voxels are permuted on the batch's device.
    """

    cfg: AugmentConfig
    seed: int
    rank: int
    device: torch.device

    def __call__(self, batch: dict, epoch: int, step: int) -> dict:
        generator = batch_generator(self.seed * 1000 + self.rank, epoch, step, "cpu")
        return augment_batch_on_device(batch, self.cfg, generator)


def run_rows(cfg: TrainConfig) -> RunData:
    """The train / val / test rows of the run (see :func:`~luna_train.data.splits.select_rows`)."""
    return select_rows(cfg.data.dataset, cfg.split, cfg.sampler.scale_weights, cfg.data.eval_scale,
                       cfg.data.train_size)


def augments_on_device(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether batches are augmented on the device instead of per item in the loader (no affine on the GPU)."""
    use_device = device.type == "cuda" if cfg.data.device_augment is None else cfg.data.device_augment
    return use_device and cfg.augment.enabled and cfg.augment.affine_prob == 0


def eval_loader(cfg: TrainConfig, rows: pd.DataFrame, info: D.DistInfo):
    """A loader over this rank's share of ``rows`` (row k goes to rank k % world_size)."""
    ds = PatchDataset(cfg.data.dataset, rows, train_size=cfg.data.train_size, stored=True,
                      resize_on_device=info.device.type == "cuda")
    shard = list(range(info.rank, len(rows), info.world_size))
    return make_loader(ds, sampler=shard, batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
                       num_workers=cfg.data.num_workers, persistent_workers=False)


def assemble(cfg: TrainConfig, info: D.DistInfo) -> RunParts:
    """Rows, loaders, model, optimizer, schedule, scaler and loss of ``cfg`` on ``info.device`` (seed set first)."""
    device, tc, bs = info.device, cfg.train, cfg.data.batch_size
    rows = run_rows(cfg)
    on_device = augments_on_device(cfg, device)
    transform = None if on_device else build_train_transform(cfg.augment)
    # on a GPU, workers only read: patches cross as stored (uint8) and are resized and augmented there
    train_ds = PatchDataset(cfg.data.dataset, rows.train, train_size=cfg.data.train_size, transform=transform,
                            stored=True, resize_on_device=device.type == "cuda")
    sampler = WeightedPatchSampler(rows.train, cfg.sampler, seed=tc.seed, num_replicas=info.world_size, rank=info.rank)
    loader = make_loader(train_ds, sampler=sampler, batch_size=bs, num_workers=cfg.data.num_workers)
    loader.generator = torch.Generator().manual_seed(tc.seed)  # iterators must not draw from the global RNG
    val_loader, test_loader = eval_loader(cfg, rows.val, info), eval_loader(cfg, rows.test, info)

    options = StepOptions.of(tc, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input shape all run long: autotune the convolutions once
    model = format_model(build_model(cfg.model).to(device), options)
    optimizer = build_optimizer(model.parameters(), cfg.optim, options)
    scheduler = build_scheduler(optimizer, cfg.optim, math.ceil(len(sampler) / bs), tc.epochs)
    scaler = make_scaler(device, tc.amp)
    loss_fn = build_loss(cfg.loss).to(device)
    return RunParts(
        rows=rows, sampler=sampler, loader=loader, val_loader=val_loader, test_loader=test_loader, model=model,
        n_params=count_parameters(model), loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
        augment_on_device=DeviceAugment(cfg.augment, tc.seed, info.rank, device) if on_device else None,
        options=options)


def training_module(model: nn.Module, cfg: TrainConfig, info: D.DistInfo) -> nn.Module:
    """What the training steps call: ``model`` under DDP when distributed, compiled when ``train.compile``
    resolves to on (:mod:`~luna_train.training.speed`); checkpoints keep saving the plain ``model``."""
    return compile_module(D.wrap_model(model, info), StepOptions.of(cfg.train, info.device))


def open_logger(cfg: TrainConfig, run_dir: Path, info: D.DistInfo, purge_step: int | None = None) -> RunLogger:
    """metrics.csv, TensorBoard and optional W&B / MLflow of the run (a no-op on ranks other than 0);
    ``purge_step``: TensorBoard hides the run's earlier events from that step on (a resume)."""
    lc = cfg.logging
    return RunLogger(run_dir, to_dict(cfg), enabled=info.is_main, tensorboard=lc.tensorboard, wandb=lc.wandb,
                     wandb_project=lc.wandb_project, name=run_dir.name, mlflow=lc.mlflow,
                     mlflow_experiment=lc.mlflow_experiment, purge_step=purge_step)
