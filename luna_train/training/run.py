"""Assemble and run a training run: data, model, optimizer, fit loop with checkpoints, final test, summary.json."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from luna_prep.errors import InputError
from luna_prep.format.reader import PatchStore
from luna_train.training import distributed as D
from luna_train.training.checkpoint import BEST, LAST, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from luna_train.config import TrainConfig, save_config, to_dict
from luna_train.data.augment import augment_batch_on_device, batch_generator, build_train_transform
from luna_train.data.dataset import PatchDataset
from luna_train.data.loader import make_loader
from luna_train.data.sampler import WeightedPatchSampler
from luna_train.data.splits import split_manifest
from luna_train.training.loop import EvalResult, Interrupted, LoopState, TrainParts, evaluate, gather_hardness, make_scaler, train_epoch
from luna_train.training.run_log import RunLogger
from luna_train.nets.losses import build_loss
from luna_train.nets.models import build_model, count_parameters
from luna_train.training.plots import CURVES_FILE, PANEL_FILE, plot_curves, plot_panel
from luna_train.training.schedule import build_scheduler

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


@dataclass
class RunData:
    """Rows of each set as PatchDataset inputs (index reset: position = row number)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


def select_rows(cfg: TrainConfig) -> RunData:
    """Split the store's manifest; train keeps every scale with sampler weight > 0, val/test only ``data.eval_scale``."""
    store = PatchStore(cfg.data.dataset)
    sets = split_manifest(store.manifest, cfg.split)
    scales = set(store.attrs.scales)
    weights = {int(k): float(v) for k, v in cfg.sampler.scale_weights.items()}
    train_scales = sorted(s for s in scales if weights.get(s, 1.0) > 0)
    if not train_scales:
        raise InputError(f"sampler.scale_weights {weights} leave no scale of the store {sorted(scales)}")
    if cfg.data.train_size is None and len(train_scales) > 1:
        raise InputError(f"data.train_size null trains at native size and needs one scale; scales {train_scales} have "
                         f"weight > 0 (set sampler.scale_weights to weight 0 all but one)")
    if cfg.data.eval_scale not in scales:
        raise InputError(f"data.eval_scale {cfg.data.eval_scale} is not a scale of the store {sorted(scales)}")
    train = sets["train"][sets["train"]["scale"].isin(train_scales)]
    val = sets["val"][sets["val"]["scale"] == cfg.data.eval_scale]
    test = sets["test"][sets["test"]["scale"] == cfg.data.eval_scale]
    return RunData(*(df.sort_values(["scale", "index"]).reset_index(drop=True) for df in (train, val, test)))


def _eval_loader(cfg: TrainConfig, rows: pd.DataFrame, info: D.DistInfo):
    ds = PatchDataset(cfg.data.dataset, rows, train_size=cfg.data.train_size, stored=True)
    shard = list(range(info.rank, len(rows), info.world_size))  # each rank evaluates its share
    return make_loader(ds, sampler=shard, batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
                       num_workers=cfg.data.num_workers, persistent_workers=False)


def _check_partition(sampler: WeightedPatchSampler, seen: list[int], info: D.DistInfo) -> dict:
    """Evidence that each rank trained on its own share of one epoch's draw list (draw k goes to rank k % R)."""
    all_seen = D.all_gather_object(seen)
    positions, _ = sampler.epoch_draws()
    return {"epoch": sampler.epoch + 1, "items_per_rank": [len(s) for s in all_seen],
            "disjoint_shares_match": all(list(map(int, positions[r::info.world_size][:len(s)])) == list(s)
                                         for r, s in enumerate(all_seen))}


def run_training(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, info: D.DistInfo | None = None,
                 on_step: Callable[[LoopState], None] | None = None) -> dict[str, Any] | None:
    """Train ``cfg`` into ``run_dir`` (resuming from last.pt when ``resume``) and return the summary dict.

    Raises :class:`~luna_train.training.loop.Interrupted` after ``train.stop_after_steps`` steps.
    """
    t0 = time.perf_counter()
    info = info or D.init_distributed()
    run_dir = Path(run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_FILE)
    D.barrier()
    seed_everything(cfg.train.seed)
    device, tc, bs = info.device, cfg.train, cfg.data.batch_size
    rows = select_rows(cfg)

    use_device = device.type == "cuda" if cfg.data.device_augment is None else cfg.data.device_augment
    on_device_aug = (use_device and cfg.augment.enabled
                     and cfg.augment.affine_prob == 0)
    transform = None if on_device_aug else build_train_transform(cfg.augment)
    train_ds = PatchDataset(cfg.data.dataset, rows.train, train_size=cfg.data.train_size, transform=transform,
                            stored=True)
    sampler = WeightedPatchSampler(rows.train, cfg.sampler, seed=tc.seed, num_replicas=info.world_size, rank=info.rank)
    loader = make_loader(train_ds, sampler=sampler, batch_size=bs, num_workers=cfg.data.num_workers)
    loader.generator = torch.Generator().manual_seed(tc.seed)  # iterators must not draw from the global RNG
    val_loader, test_loader = _eval_loader(cfg, rows.val, info), _eval_loader(cfg, rows.test, info)

    model = build_model(cfg.model).to(device)
    n_params = count_parameters(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = math.ceil(len(sampler) / bs)
    scheduler = build_scheduler(optimizer, cfg.optim, steps_per_epoch, tc.epochs)
    scaler = make_scaler(device, tc.amp)
    loss_fn = build_loss(cfg.loss).to(device)
    state, hard = LoopState(), {"positions": [], "scores": []}
    pending_rng: dict | None = None
    if resume:
        ckpt = load_checkpoint(run_dir / LAST, map_location="cpu")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state = LoopState.from_dict(ckpt["state"])
        sampler.load_state_dict(ckpt["sampler"])
        mine = ckpt["per_rank"][min(info.rank, len(ckpt["per_rank"]) - 1)]
        hard, pending_rng, state.samples_seen = mine["hard"], mine["rng"], mine["samples_seen"]
    net = D.wrap_model(model, info)
    if tc.compile and device.type == "cuda":
        net = torch.compile(net)

    logger = RunLogger(run_dir, to_dict(cfg), enabled=info.is_main, tensorboard=cfg.logging.tensorboard,
                       wandb=cfg.logging.wandb, wandb_project=cfg.logging.wandb_project, name=run_dir.name)
    if resume:
        logger.rewrite(state.history)
    aug = None
    if on_device_aug:
        aug = lambda b, e, s: augment_batch_on_device(b, cfg.augment, batch_generator(tc.seed * 1000 + info.rank, e, s, device))  # noqa: E731
    parts = TrainParts(model=net, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                       sampler=sampler, loader=loader, device=device, amp=tc.amp, grad_clip=cfg.optim.grad_clip,
                       batch_size=bs, augment_on_device=aug, hard_mining=cfg.sampler.hard_mining_every > 0)

    def save(paths: list[str]) -> None:
        per_rank = D.all_gather_object({"rng": rng_state(), "hard": {k: list(v) for k, v in hard.items()},
                                        "samples_seen": state.samples_seen})
        if not info.is_main:
            return
        payload = {"kind": "luna-train-checkpoint", "version": 1, "model": model.state_dict(),
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "scaler": scaler.state_dict(), "sampler": sampler.state_dict(consumed=state.step_in_epoch * bs),
                   "state": state.to_dict(), "per_rank": per_rank, "config": to_dict(cfg),
                   "world_size": info.world_size}
        for name in paths:
            save_checkpoint(run_dir / name, payload)

    def step_hook(st: LoopState) -> None:
        every, stop = tc.checkpoint_every_steps, tc.stop_after_steps
        stopping = stop is not None and st.step >= stop
        if (every and st.step % every == 0) or stopping:
            save([LAST])
        if on_step is not None:
            on_step(st)
        if stopping:
            raise Interrupted(f"stopped after {st.step} steps (train.stop_after_steps); resume with --resume")

    def restore() -> None:
        if pending_rng is not None:
            set_rng_state(pending_rng)

    stopped_early, ddp_check = False, None
    while state.epoch < tc.epochs:
        e = state.epoch
        seen: list | None = [] if ddp_check is None and state.step_in_epoch == 0 else None
        train_loss = train_epoch(parts, state, restore_rng=restore if pending_rng is not None else None,
                                 on_step=step_hook, progress=cfg.logging.progress and info.is_main, hard=hard,
                                 seen=seen)
        if seen is not None:
            ddp_check = _check_partition(sampler, seen, info)
        pending_rng = None
        train_loss = float(D.all_reduce_sum(torch.tensor([train_loss], dtype=torch.float64))[0]) / info.world_size
        if sampler.hard_mining_due(e):
            sampler.update_hardness(*gather_hardness(hard))
        hard = {"positions": [], "scores": []}
        res: EvalResult | None = None
        if (e + 1) % max(tc.val_every, 1) == 0 or e + 1 == tc.epochs:
            res = evaluate(model, val_loader, loss_fn, device, tc.amp, tc.threshold, cfg.logging.panel_patches)
        improved = False
        if res is not None:
            metric = res.dice if not math.isnan(res.dice) else res.pooled_dice
            if not math.isnan(metric) and metric > state.best_metric:
                state.best_metric, state.best_epoch, improved = float(metric), e, True
        state.bad_epochs = e - state.best_epoch if state.best_epoch >= 0 else e + 1
        nan = float("nan")
        row = {"epoch": e + 1, "step": state.step, "train_loss": train_loss, "val_loss": res.loss if res else nan,
               "val_dice": res.dice if res else nan, "val_pooled_dice": res.pooled_dice if res else nan,
               "lr": scheduler.get_last_lr()[0], "seconds": state.epoch_seconds}
        state.history.append(row)
        logger.log_epoch(row)
        state.epoch, state.step_in_epoch, state.loss_sum, state.epoch_seconds = e + 1, 0, 0.0, 0.0
        save([LAST, BEST] if improved or state.best_epoch < 0 else [LAST])
        if info.is_main and cfg.logging.plots:
            plot_curves(state.history, run_dir / CURVES_FILE, state.best_epoch)
            if improved and res is not None:
                plot_panel(res.panel, run_dir / PANEL_FILE, f"validation, epoch {e + 1}: ground truth (green), "
                           f"prediction (red); Dice {res.dice:.3f}")
        if tc.patience > 0 and state.bad_epochs >= tc.patience:
            stopped_early = True
            break

    # final evaluation of the best checkpoint on validation and test
    best = load_checkpoint(run_dir / BEST if (run_dir / BEST).exists() else run_dir / LAST, map_location="cpu") \
        if info.is_main or info.world_size == 1 else None
    state_dict = D.broadcast_object(best["model"] if best is not None else None)
    model.load_state_dict(state_dict)
    val = evaluate(model, val_loader, loss_fn, device, tc.amp, tc.threshold, cfg.logging.panel_patches)
    test = evaluate(model, test_loader, loss_fn, device, tc.amp, tc.threshold, 0)
    if info.is_main and cfg.logging.plots:
        plot_panel(val.panel, run_dir / PANEL_FILE, f"validation, best model (epoch {state.best_epoch + 1}): "
                   f"ground truth (green), prediction (red); Dice {val.dice:.3f}")
    samples = D.all_gather_object(state.samples_seen)
    summary = {
        "val_dice": val.dice, "test_dice": test.dice,
        "generalization": test.dice / val.dice if val.dice and not math.isnan(val.dice) else None,
        "val_pooled_dice": val.pooled_dice, "test_pooled_dice": test.pooled_dice,
        "val_loss": val.loss, "test_loss": test.loss,
        "epochs_run": state.epoch, "best_epoch": state.best_epoch + 1, "stopped_early": stopped_early,
        "steps": state.step, "seconds": round(time.perf_counter() - t0, 2),
        "n_train": len(rows.train), "n_val": val.n_patches, "n_test": test.n_patches,
        "n_val_foreground": val.n_foreground, "n_test_foreground": test.n_foreground,
        "train_scales": sorted(int(s) for s in rows.train["scale"].unique()), "eval_scale": cfg.data.eval_scale,
        "train_size": cfg.data.train_size, "model": cfg.model.name, "parameters": n_params,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": info.world_size, "samples_per_rank": samples, "rank_draws": ddp_check, "dataset": str(cfg.data.dataset),
        "run_dir": str(run_dir),
    }
    summary = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
    if info.is_main:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    logger.log_scalars({k: summary[k] for k in ("test_dice", "test_pooled_dice") if summary[k] is not None}, state.step,
                       "final/")
    logger.close()
    D.barrier()
    return summary
