"""``luna-train detect``: scan-level candidates over a store's volumes -> a LUNA16 submission CSV."""

from __future__ import annotations

import json
from pathlib import Path

import click

from luna_train.cli.options import model_options, postprocess_options, subsets_option


@click.command("detect")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", default=None, help="Store built with --volumes [default: the run's dataset].")
@subsets_option("--subsets", help="Subsets to detect on [default: the run's test subsets].")
@click.option("--out", default=None, type=click.Path(dir_okay=False),
              help="Submission CSV [default: RUN_DIR/submission.csv].")
@click.option("--plots", default=None, type=click.Path(file_okay=False),
              help="Folder for a candidates figure per scan.")
@click.option("--annotations", default=None, type=click.Path(exists=True, dir_okay=False),
              help="annotations.csv, to draw the true nodules in the figures.")
@click.option("--sw-batch-size", type=click.IntRange(min=1), default=None,
              help="Sliding windows per forward pass [default: 32 on CUDA, 8 on the CPU].")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Also write what was done as JSON, with the seconds per scan of each stage.")
@model_options
@postprocess_options
def detect(run_dir, dataset, subsets, out, plots, annotations, sw_batch_size, json_out, tta, ensemble, checkpoint,
           threshold, min_size, overlap):
    """Sliding-window detection over whole scans of a store -> a LUNA16 submission CSV.

    Writes SUBMISSION.csv (seriesuid,coordX,coordY,coordZ,probability) and, beside it,
    SUBMISSION_seriesuids.csv listing the scans it covered (the FP-rate denominator for `luna-train froc`).
    Logs, per scan, the seconds spent reading the volume, in the sliding window, extracting candidates
    and plotting, and prints their means.
    """
    from luna_train.inference.from_run import detect_to_files, load_run_model, timing_text

    run = load_run_model(run_dir, ensemble, checkpoint, tta, threshold, min_size, sw_batch_size, overlap)
    click.echo(f"post-processing: {run.postprocess_source}", err=True)
    w = detect_to_files(run, run_dir, dataset, subsets, out, plots, annotations)
    click.echo(f"{w['n_candidates']} candidates in {w['n_scans']} scans of subsets {w['subsets']} "
               f"-> {w['submission']}")
    click.echo(f"scans covered: {w['seriesuids']}")
    click.echo(f"time per scan (mean of {w['n_scans']}, {w['device']}): {timing_text(w['mean_timings'])}")
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(w, indent=2, default=str) + "\n")
