"""``luna-train predict``: segment one raw scan in its own geometry."""

from __future__ import annotations

from pathlib import Path

import click

from luna_train.cli.options import detect_config, model_options, postprocess_options


@click.command("predict")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--scan", "scan_path", required=True, type=click.Path(exists=True, dir_okay=False), help="A raw scan (.mhd).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Segmentation (.mhd, uint8 0/1) in the scan's geometry.")
@click.option("--probabilities", default=None, type=click.Path(dir_okay=False), help="Also write the probability map here.")
@click.option("--candidates", default=None, type=click.Path(dir_okay=False), help="Candidate CSV [default: OUT with .csv].")
@click.option("--dataset", default=None, help="Store whose spacing and HU window the model was trained on [default: the run's].")
@model_options
@postprocess_options
def predict(run_dir, scan_path, out, probabilities, candidates, dataset, tta, ensemble, checkpoint, threshold, min_size):
    """Segment one raw scan and list its candidates, in the scan's own geometry (opens over it in 3D Slicer / ITK-SNAP)."""
    import SimpleITK as sitk

    from luna_prep.sharing.cards import open_dataset
    from luna_train.inference.trained_model import load_model_like
    from luna_train.inference.predict_scan import predict_scan

    model = load_model_like(run_dir, ensemble, checkpoint)
    attrs = open_dataset(dataset or model.config.data.dataset).attrs
    pred = predict_scan(model, scan_path, attrs.spacing_mm, attrs.hu_window, attrs.image_dtype,
                        detect_config(tta, threshold, min_size))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(pred.mask, str(out), useCompression=True)
    if probabilities:
        sitk.WriteImage(pred.probabilities, str(probabilities), useCompression=True)
    cand_path = Path(candidates) if candidates else Path(out).with_suffix(".csv")
    pred.candidates.to_csv(cand_path, index=False)
    click.echo(f"segmentation: {out} ({int(sitk.GetArrayViewFromImage(pred.mask).sum())} voxels); "
               f"{len(pred.candidates)} candidates: {cand_path}")
