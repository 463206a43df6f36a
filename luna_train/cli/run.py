"""``luna-train run``: train a model into a run directory."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

import click

from luna_train.cli.options import resolve_store, subsets_option


def _run_dir(out: str | None, name: str | None, config_file: str | None, resume: bool) -> Path:
    """The run directory of the options; a usage error when it contradicts ``--resume``."""
    from luna_train.training import distributed as D
    from luna_train.training.checkpoint import BEST, LAST
    from luna_train.training.run import resume_checkpoint, used_run_files

    if out is None and name is None and resume:
        raise click.UsageError("--resume needs the run: pass --out RUN_DIR or --name NAME")
    if name is None and out is None:
        stem = Path(config_file).stem if config_file else "run"
        name = D.broadcast_object(f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(out) if out is not None else Path("runs") / name
    if resume and resume_checkpoint(run_dir) is None:
        raise click.UsageError(f"--resume: {run_dir / LAST} not found")
    used = [] if resume else used_run_files(run_dir)
    if used:
        hint = ("pass --resume to continue it" if resume_checkpoint(run_dir) is not None
                else f"it has no {LAST} or {BEST} to resume from: delete it")
        raise click.UsageError(f"{run_dir} already holds a run ({', '.join(used)}); {hint}, or pick another --out")
    return run_dir


def _config(config_file, overrides, dataset, store_url, verify, split_options: dict):
    """The checked TrainConfig of the file, ``--set`` overrides and the dataset/split options."""
    from dataclasses import replace

    from luna_train.config import check_config, load_config

    cfg = load_config(config_file, list(overrides))
    split = replace(cfg.split, **{k: v for k, v in split_options.items() if v is not None})
    cfg = check_config(replace(cfg, split=split))
    store = resolve_store(str(dataset or cfg.data.dataset), store_url, verify)
    return replace(cfg, data=replace(cfg.data, dataset=store))


def announce(run_dir: Path, tensorboard: bool, resume: bool) -> None:
    """Where the run writes, and how to watch it, on the ``luna_train`` logger before the first epoch."""
    from luna_train.training.run_log import TB_DIR

    log = logging.getLogger("luna_train")
    log.info("%s: %s", "resuming the run in" if resume else "run directory", run_dir)
    if tensorboard:
        log.info("watch it with: tensorboard --logdir %s", shlex.quote(str(run_dir / TB_DIR)))


@click.command("run")
@click.option("--dataset", type=click.Path(), default=None,
              help="luna-patches store [default: data.dataset of the config, else data/patches.zarr].")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML or TOML config (on --resume: RUN_DIR/config.yaml when omitted).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set optim.lr=3e-4 --set model.channels=[8,16,32]. Repeatable.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory [default: runs/NAME].")
@click.option("--store-url", default=None,
              help="Where the card's store lives now (path, .zip, http(s)://, s3://...), when --dataset is a card.")
@click.option("--no-verify", is_flag=True, help="Skip checking the store's small files against the card's checksums.")
@click.option("--resume", is_flag=True, help="Continue the run in the run directory from its last.pt.")
@subsets_option("--train-subsets", help="Training subsets, e.g. 0-7 or 0,2,5.")
@subsets_option("--val-subsets", help="Validation subsets, e.g. 8.")
@subsets_option("--test-subsets", help="Test subsets, e.g. 9.")
@click.option("--fold", type=click.IntRange(0, 9), default=None,
              help="Cross-validation fold: this subset validates, the other non-test subsets train.")
@click.option("--name", default=None, help="Run name [default: config file stem + timestamp].")
def run(dataset, config_file, overrides, out, store_url, no_verify, resume, train_subsets, val_subsets, test_subsets,
        fold, name):
    """Train a segmentation model; writes checkpoints, metrics, plots and summary.json to the run directory.

    Works the same under ``torchrun --nproc-per-node N`` (DistributedDataParallel; rank 0 writes).
    SIGTERM, SIGUSR1 (SLURM's --signal) or a first Ctrl-C finish the step in flight, write last.pt and stop
    with exit status 128 + the signal's number (143 for SIGTERM); train.stop_after_steps stops with exit
    status 3. Either way --resume continues the run exactly.
    """
    from luna_train.training import distributed as D
    from luna_train.training.loop import Interrupted
    from luna_train.training.run import CONFIG_FILE, run_training

    info = D.init_distributed()
    try:
        run_dir = _run_dir(out, name, config_file, resume)
        if config_file is None and resume:
            config_file = run_dir / CONFIG_FILE
        cfg = _config(config_file, overrides, dataset, store_url, not no_verify,
                      {"train_subsets": train_subsets, "val_subsets": val_subsets, "test_subsets": test_subsets,
                       "fold": fold})
        if info.is_main:
            announce(run_dir, cfg.logging.tensorboard, resume)
        stopped = None
        try:
            summary = run_training(cfg, run_dir, resume=resume, info=info)
        except Interrupted as exc:
            if info.is_main:
                click.echo(f"{exc}; run directory {run_dir}", err=True)
            stopped = exc.exit_status
        if stopped is not None:  # outside the handler: the traceback's frames (and the loaders) are released first
            sys.exit(stopped)
        if info.is_main and summary is not None:
            click.echo(json.dumps(summary, indent=2))
            click.echo(f"run directory: {run_dir}")
    finally:
        D.cleanup()
