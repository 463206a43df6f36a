"""``luna-train detect`` (scan-level candidates from a store's volumes) and ``luna-train predict`` (one raw scan)."""

from __future__ import annotations

from pathlib import Path

import click

from luna_train.cli.options import subsets_option
from luna_train.evaluation.patch_eval import load_model_like


def _detect_config(tta: bool, threshold: float, min_size: int):
    from luna_train.inference.detect import DetectConfig
    from luna_train.inference.postprocess import PostprocessConfig

    return DetectConfig(tta=tta, postprocess=PostprocessConfig(threshold=threshold, min_size=min_size))


_common = [
    click.option("--tta", is_flag=True, help="Average over flips and 90-degree rotations (each inverted exactly)."),
    click.option("--ensemble", multiple=True, type=click.Path(file_okay=False), help="More run directories to average."),
    click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True),
    click.option("--threshold", default=0.5, show_default=True, help="Probability threshold of the segmentation."),
    click.option("--min-size", default=3, show_default=True, help="Components smaller than this (voxels) are dropped."),
]


def common_options(fn):
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.command("detect")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", default=None, help="Store built with --volumes [default: the run's dataset].")
@click.option("--subsets", callback=subsets_option, default=None, help="Subsets to detect on [default: the run's test subsets].")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Submission CSV [default: RUN_DIR/submission.csv].")
@click.option("--plots", default=None, type=click.Path(file_okay=False), help="Folder for a candidates figure per scan.")
@click.option("--annotations", default=None, type=click.Path(exists=True, dir_okay=False),
              help="annotations.csv, to draw the true nodules in the figures.")
@common_options
def detect(run_dir, dataset, subsets, out, plots, annotations, tta, ensemble, checkpoint, threshold, min_size):
    """Sliding-window detection over whole scans of a store -> a LUNA16 submission CSV.

    Writes SUBMISSION.csv (seriesuid,coordX,coordY,coordZ,probability) and, beside it,
    SUBMISSION_seriesuids.csv listing the scans it covered (the FP-rate denominator for `luna-train froc`).
    """
    import pandas as pd
    from tqdm import tqdm

    from luna_prep.format.spec import FormatError
    from luna_prep.format.reader import PatchStore
    from luna_train.evaluation.detection_plot import plot_scan_candidates
    from luna_train.inference.detect import SUBMISSION_COLUMNS, detect_volume

    model = load_model_like(run_dir, ensemble, checkpoint)
    cfg = _detect_config(tta, threshold, min_size)
    store = PatchStore(dataset or model.config.data.dataset)
    if not store.has_volumes():
        raise click.UsageError(f"{store.root}: built without --volumes; rebuild with `luna-prep build --volumes`")
    subsets = subsets or tuple(model.config.split.test_subsets)
    scans = store.scans[(store.scans["status"] == "ok") & store.scans["subset"].isin(subsets)]
    if scans.empty:
        raise click.UsageError(f"{store.root}: no finished scans in subsets {list(subsets)}")
    truth = pd.read_csv(annotations) if annotations else None
    parts = []
    for uid in tqdm(scans["seriesuid"].tolist(), desc="scans", unit="scan"):
        try:
            volume = store.read_volume(uid)
        except FormatError as exc:
            raise click.ClickException(str(exc)) from exc
        candidates, _ = detect_volume(model, volume, cfg)
        parts.append(candidates)
        if plots and len(candidates):
            plot_scan_candidates(volume, candidates, Path(plots) / f"{uid}.png", annotations=truth)
    submission = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SUBMISSION_COLUMNS))
    out = Path(out) if out else Path(run_dir) / "submission.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    submission.to_csv(out, index=False)
    uids_path = out.with_name(f"{out.stem}_seriesuids.csv")
    uids_path.write_text("".join(f"{u}\n" for u in scans["seriesuid"]))
    click.echo(f"{len(submission)} candidates in {len(scans)} scans of subsets {list(subsets)} -> {out}")
    click.echo(f"scans covered: {uids_path}")


@click.command("predict")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--scan", "scan_path", required=True, type=click.Path(exists=True, dir_okay=False), help="A raw scan (.mhd).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Segmentation (.mhd, uint8 0/1) in the scan's geometry.")
@click.option("--probabilities", default=None, type=click.Path(dir_okay=False), help="Also write the probability map here.")
@click.option("--candidates", default=None, type=click.Path(dir_okay=False), help="Candidate CSV [default: OUT with .csv].")
@click.option("--dataset", default=None, help="Store whose spacing and HU window the model was trained on [default: the run's].")
@common_options
def predict(run_dir, scan_path, out, probabilities, candidates, dataset, tta, ensemble, checkpoint, threshold, min_size):
    """Segment one raw scan and list its candidates, in the scan's own geometry (opens over it in 3D Slicer / ITK-SNAP)."""
    import SimpleITK as sitk

    from luna_prep.format.reader import PatchStore
    from luna_train.inference.predict_scan import predict_scan

    model = load_model_like(run_dir, ensemble, checkpoint)
    attrs = PatchStore(dataset or model.config.data.dataset).attrs
    pred = predict_scan(model, scan_path, attrs.spacing_mm, attrs.hu_window, attrs.image_dtype,
                        _detect_config(tta, threshold, min_size))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(pred.mask, str(out), useCompression=True)
    if probabilities:
        sitk.WriteImage(pred.probabilities, str(probabilities), useCompression=True)
    cand_path = Path(candidates) if candidates else Path(out).with_suffix(".csv")
    pred.candidates.to_csv(cand_path, index=False)
    click.echo(f"segmentation: {out} ({int(sitk.GetArrayViewFromImage(pred.mask).sum())} voxels); "
               f"{len(pred.candidates)} candidates: {cand_path}")
