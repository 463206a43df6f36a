"""``luna-train evaluate``: patch metrics of a trained run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from luna_train.cli.options import PROBABILITY, model_options, resolve_store, subsets_option


@click.command("evaluate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", type=click.Path(), default=None,
              help="luna-patches store (or dataset card) [default: data.dataset of the run's config].")
@subsets_option("--subsets", help="Subsets to evaluate, e.g. 9 [default: the run's test subsets].")
@click.option("--postprocess", "postprocess_tune", is_flag=True,
              help="Tune post-processing on the run's validation subsets, freeze it into RUN_DIR/postprocess.json "
                   "(detect and predict then use it), report raw and post-processed metrics.")
@model_options
@click.option("--threshold", type=PROBABILITY, default=None,
              help="Raw probability threshold [default: the run's train.threshold].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Patches per forward pass [default: the run's eval batch size].")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the results as JSON here.")
def evaluate(run_dir, dataset, subsets, postprocess_tune, tta, ensemble, checkpoint, threshold, batch_size, json_out):
    """Patch metrics of a trained run: per-patch and pooled Dice, precision, recall (at eval_scale, as training)."""
    from luna_train.evaluation.patch_eval import evaluate_run, format_report, freeze_postprocess

    store = resolve_store(dataset, None, True) if dataset is not None else None
    res = evaluate_run(run_dir, dataset=store, subsets=subsets, tta=tta, postprocess_tune=postprocess_tune,
                       ensemble=ensemble, checkpoint=checkpoint, batch_size=batch_size, threshold=threshold,
                       log=lambda msg: click.echo(msg, err=True))
    click.echo(format_report(res))
    if postprocess_tune:
        frozen = freeze_postprocess(run_dir, res)
        click.echo(f"post-processing frozen: {frozen}" if frozen else
                   "post-processing tuned for the ensemble: not written to the run directory")
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(res, indent=2) + "\n")
        click.echo(f"wrote {json_out}")
