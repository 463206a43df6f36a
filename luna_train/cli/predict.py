"""``luna-train predict``: segment one raw scan in its own geometry."""

from __future__ import annotations

import click

from luna_train.cli.options import model_options, postprocess_options


@click.command("predict")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--scan", "scan_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A raw scan (.mhd).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Segmentation (uint8 0/1) in the scan's geometry: .mhd, .nii.gz, .nrrd, or .seg.nrrd (3D Slicer).")
@click.option("--probabilities", default=None, type=click.Path(dir_okay=False),
              help="Also write the probability map here.")
@click.option("--candidates", default=None, type=click.Path(dir_okay=False),
              help="Candidates: .csv, or .mrk.json (3D Slicer markups, LPS) [default: OUT's name with .csv].")
@click.option("--dataset", default=None,
              help="Store whose spacing and HU window the model was trained on "
                   "[default: the run's preprocessing.json].")
@model_options
@postprocess_options
def predict(run_dir, scan_path, out, probabilities, candidates, dataset, tta, ensemble, checkpoint, threshold,
            min_size, overlap):
    """Segment one raw scan and list its candidates, in the scan's own geometry (opens over it in 3D Slicer).

    Needs no patch store: the run's preprocessing.json says how the scan is prepared. The mask holds the
    voxels the candidates are made of (post-processed, inside the lungs).
    """
    from luna_train.inference.from_run import load_run_model, predict_to_files

    run = load_run_model(run_dir, ensemble, checkpoint, tta, threshold, min_size, overlap=overlap)
    click.echo(f"post-processing: {run.postprocess_source}", err=True)
    w = predict_to_files(run, run_dir, scan_path, out, candidates, probabilities, dataset)
    for warning in w["warnings"]:
        click.echo(f"WARNING {warning}", err=True)
    click.echo(f"segmentation: {w['mask']} ({w['n_voxels']} voxels); "
               f"{w['n_candidates']} candidates: {w['candidates']}")
