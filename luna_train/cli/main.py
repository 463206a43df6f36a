"""``luna-train`` command line: a click group; ``run`` trains a model (more subcommands plug into ``main``)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from luna_train.cli.options import subsets_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Nodule segmentation training and evaluation on luna-patches stores."""


def _resolve_store(dataset: str, store_url: str | None, verify: bool) -> str:
    """The store behind ``dataset``: a store path or URL as is, or the store a dataset card points at."""
    from luna_prep.sharing.cards import CardError, resolve_dataset
    from luna_prep.format.location import is_url

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
@click.option("--train-subsets", callback=subsets_option, default=None, help="Training subsets, e.g. 0-7 or 0,2,5.")
@click.option("--val-subsets", callback=subsets_option, default=None, help="Validation subsets, e.g. 8.")
@click.option("--test-subsets", callback=subsets_option, default=None, help="Test subsets, e.g. 9.")
@click.option("--fold", type=int, default=None, help="Cross-validation fold: this subset validates, the rest train.")
@click.option("--name", default=None, help="Run name [default: config file stem + timestamp].")
def run_cmd(dataset, config_file, overrides, out, store_url, no_verify, resume, train_subsets, val_subsets, test_subsets,
            fold, name):
    """Train a segmentation model; writes checkpoints, metrics, plots and summary.json to the run directory.

    Works the same under ``torchrun --nproc-per-node N`` (DistributedDataParallel; rank 0 writes).
    """
    from luna_train.training import distributed as D
    from luna_train.config import ConfigError, load_config
    from luna_train.training.loop import Interrupted
    from luna_train.training.run import CONFIG_FILE, run_training

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


@main.command("evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", type=click.Path(), default=None,
              help="luna-patches store (or dataset card) [default: data.dataset of the run's config].")
@click.option("--subsets", callback=subsets_option, default=None, help="Subsets to evaluate, e.g. 9 [default: the run's test subsets].")
@click.option("--tta", is_flag=True, help="Average over flips and 90-degree axial rotations (each inverted exactly).")
@click.option("--postprocess", "postprocess_tune", is_flag=True,
              help="Tune post-processing on the run's validation subsets, freeze it, report raw and post-processed metrics.")
@click.option("--ensemble", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Another run directory whose model is averaged with RUN_DIR's. Repeatable.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--threshold", type=float, default=None, help="Raw probability threshold [default: the run's train.threshold].")
@click.option("--batch-size", type=int, default=None, help="Patches per forward pass [default: the run's eval batch size].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the results as JSON here.")
def evaluate_cmd(run_dir, dataset, subsets, tta, postprocess_tune, ensemble, checkpoint, threshold, batch_size, json_out):
    """Patch metrics of a trained run: per-patch and pooled Dice, precision, recall (at eval_scale, as training)."""
    from luna_train.evaluation.patch_eval import evaluate_run, format_report

    store = _resolve_store(dataset, None, True) if dataset is not None else None
    try:
        res = evaluate_run(run_dir, dataset=store, subsets=subsets, tta=tta, postprocess_tune=postprocess_tune,
                           ensemble=ensemble, checkpoint=checkpoint, batch_size=batch_size, threshold=threshold,
                           log=lambda msg: click.echo(msg, err=True))
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_report(res))
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(res, indent=2) + "\n")
        click.echo(f"wrote {json_out}")


@main.command("froc")
@click.argument("submission", type=click.Path(exists=True, dir_okay=False))
@click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False), help="LUNA16 annotations.csv.")
@click.option("--excluded", type=click.Path(exists=True, dir_okay=False), default=None,
              help="LUNA16 annotations_excluded.csv (findings whose candidates are ignored).")
@click.option("--seriesuids", required=True, type=click.Path(exists=True, dir_okay=False),
              help="seriesuids.csv: the scans evaluated (the FP rate is per scan of this list).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write the summary as JSON here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None, help="Write the FROC plot (PNG) here.")
@click.option("--bootstrap", type=int, default=1000, show_default=True, help="Bootstrap samples (scans resampled) of the 95% band.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
def froc_cmd(submission, annotations, excluded, seriesuids, json_out, plot_out, bootstrap, seed):
    """LUNA16 FROC and CPM of a submission CSV (seriesuid, coordX, coordY, coordZ, probability)."""
    from luna_train.evaluation.froc import run_froc

    try:
        res = run_froc(submission, annotations, excluded, seriesuids, json_out=json_out, plot_out=plot_out,
                       n_bootstrap=bootstrap, seed=seed)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    d = res.to_json_dict()

    def f(v):
        return "-" if v is None else f"{v:.4f}"

    click.echo(f"{d['n_scans']} scans, {d['n_nodules']} nodules, {d['n_hits']} detected, "
               f"{d['n_candidates']} candidates, {d['n_false_positives']} false positives "
               f"({d['n_ignored_excluded']} on excluded findings, {d['n_ignored_double']} double hits ignored)")
    click.echo(f"{'FPs/scan':>10}  {'sensitivity':>11}  95% band")
    for fp, s, lo, hi in zip(d["operating_points"], d["sensitivities"], d["sensitivities_lower"],
                             d["sensitivities_upper"]):
        click.echo(f"{fp:>10g}  {f(s):>11}  {f(lo)}-{f(hi)}")
    lo, hi = d["cpm_ci"]
    click.echo(f"CPM {f(d['cpm'])} (95% CI {f(lo)}-{f(hi)}, {d['n_bootstrap']} bootstrap samples)")
    for path in (json_out, plot_out):
        if path is not None:
            click.echo(f"wrote {path}")


from luna_train.cli.scan_commands import detect, predict  # noqa: E402  (scan-level commands live in their own module)

main.add_command(detect)
main.add_command(predict)


if __name__ == "__main__":
    main()
