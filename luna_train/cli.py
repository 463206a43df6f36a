"""``luna-train`` command line: a click group; ``run`` trains a model (more subcommands plug into ``main``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from luna_prep.tables import parse_subsets


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Nodule segmentation training and evaluation on luna-patches stores."""


def _subsets(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(parse_subsets(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


def _resolve_store(dataset: str, store_url: str | None, verify: bool) -> str:
    """The store behind ``dataset``: a store path or URL as is, or the store a dataset card points at."""
    from luna_prep.cards import CardError, resolve_dataset
    from luna_prep.storefs import is_url

    try:
        store = resolve_dataset(str(dataset), store_url, verify)
    except (CardError, ValueError, FileNotFoundError) as exc:
        raise click.UsageError(str(exc)) from exc
    if not is_url(store) and not Path(store).exists():
        raise click.UsageError(f"dataset {store} not found; build one with `luna-prep build` or pass --dataset")
    return store


@main.command("run")
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
@click.option("--train-subsets", callback=_subsets, default=None, help="Training subsets, e.g. 0-7 or 0,2,5.")
@click.option("--val-subsets", callback=_subsets, default=None, help="Validation subsets, e.g. 8.")
@click.option("--test-subsets", callback=_subsets, default=None, help="Test subsets, e.g. 9.")
@click.option("--fold", type=int, default=None, help="Cross-validation fold: this subset validates, the rest train.")
@click.option("--name", default=None, help="Run name [default: config file stem + timestamp].")
def run_cmd(dataset, config_file, overrides, out, store_url, no_verify, resume, train_subsets, val_subsets, test_subsets,
            fold, name):
    """Train a segmentation model; writes checkpoints, metrics, plots and summary.json to the run directory.

    Works the same under ``torchrun --nproc-per-node N`` (DistributedDataParallel; rank 0 writes).
    """
    from luna_train import distributed as D
    from luna_train.config import ConfigError, load_config
    from luna_train.engine import Interrupted
    from luna_train.run import CONFIG_FILE, run_training

    info = D.init_distributed()
    try:
        if out is None and name is None and resume:
            raise click.UsageError("--resume needs the run: pass --out RUN_DIR or --name NAME")
        if name is None and out is None:
            stem = Path(config_file).stem if config_file else "run"
            name = D.broadcast_object(f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir = Path(out) if out is not None else Path("runs") / name
        if resume and not (run_dir / "last.pt").is_file():
            raise click.UsageError(f"--resume: {run_dir / 'last.pt'} not found")
        if not resume and (run_dir / "last.pt").exists():
            raise click.UsageError(f"{run_dir} already holds a run; pass --resume to continue it or pick another --out")
        if config_file is None and resume:
            config_file = run_dir / CONFIG_FILE
        try:
            cfg = load_config(config_file, list(overrides))
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        if dataset is not None:
            cfg.data.dataset = str(dataset)
        for field, value in (("train_subsets", train_subsets), ("val_subsets", val_subsets),
                             ("test_subsets", test_subsets), ("fold", fold)):
            if value is not None:
                setattr(cfg.split, field, value)
        cfg.data.dataset = _resolve_store(cfg.data.dataset, store_url, not no_verify)
        try:
            summary = run_training(cfg, run_dir, resume=resume, info=info)
        except Interrupted as exc:
            if info.is_main:
                click.echo(f"{exc}; run directory {run_dir}", err=True)
            sys.exit(3)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        if info.is_main and summary is not None:
            click.echo(json.dumps(summary, indent=2))
            click.echo(f"run directory: {run_dir}")
    finally:
        D.cleanup()


if __name__ == "__main__":
    main()
