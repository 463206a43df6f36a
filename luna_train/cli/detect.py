"""``luna-train detect``: scan-level candidates over a store's volumes -> a LUNA16 submission CSV."""

from __future__ import annotations

from pathlib import Path

import click

from luna_train.cli.options import detect_config, model_options, postprocess_options, subsets_option


def detect_store(model, store, subsets, cfg, plots=None, annotations=None):
    """Candidates of every finished scan of ``subsets`` in ``store``: (submission frame, seriesuids covered)."""
    import pandas as pd
    from tqdm import tqdm

    from luna_train.evaluation.detection_plot import plot_scan_candidates
    from luna_train.inference.detect import SUBMISSION_COLUMNS, detect_volume

    if not store.has_volumes():
        raise click.UsageError(f"{store.root}: built without --volumes; rebuild with `luna-prep build --volumes`")
    scans = store.scans[(store.scans["status"] == "ok") & store.scans["subset"].isin(subsets)]
    if scans.empty:
        raise click.UsageError(f"{store.root}: no finished scans in subsets {list(subsets)}")
    truth = pd.read_csv(annotations) if annotations else None
    parts = []
    for uid in tqdm(scans["seriesuid"].tolist(), desc="scans", unit="scan"):
        volume = store.read_volume(uid)
        candidates, _ = detect_volume(model, volume, cfg)
        parts.append(candidates)
        if plots and len(candidates):
            plot_scan_candidates(volume, candidates, Path(plots) / f"{uid}.png", annotations=truth)
    submission = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SUBMISSION_COLUMNS))
    return submission, scans["seriesuid"].tolist()


@click.command("detect")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", default=None, help="Store built with --volumes [default: the run's dataset].")
@subsets_option("--subsets", help="Subsets to detect on [default: the run's test subsets].")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Submission CSV [default: RUN_DIR/submission.csv].")
@click.option("--plots", default=None, type=click.Path(file_okay=False), help="Folder for a candidates figure per scan.")
@click.option("--annotations", default=None, type=click.Path(exists=True, dir_okay=False),
              help="annotations.csv, to draw the true nodules in the figures.")
@model_options
@postprocess_options
def detect(run_dir, dataset, subsets, out, plots, annotations, tta, ensemble, checkpoint, threshold, min_size):
    """Sliding-window detection over whole scans of a store -> a LUNA16 submission CSV.

    Writes SUBMISSION.csv (seriesuid,coordX,coordY,coordZ,probability) and, beside it,
    SUBMISSION_seriesuids.csv listing the scans it covered (the FP-rate denominator for `luna-train froc`).
    """
    from luna_prep.sharing.cards import open_dataset
    from luna_train.inference.trained_model import load_model_like

    model = load_model_like(run_dir, ensemble, checkpoint)
    subsets = subsets or tuple(model.config.split.test_subsets)
    submission, uids = detect_store(model, open_dataset(dataset or model.config.data.dataset), subsets,
                                    detect_config(tta, threshold, min_size), plots, annotations)
    out = Path(out) if out else Path(run_dir) / "submission.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    submission.to_csv(out, index=False)
    uids_path = out.with_name(f"{out.stem}_seriesuids.csv")
    uids_path.write_text("".join(f"{u}\n" for u in uids))
    click.echo(f"{len(submission)} candidates in {len(uids)} scans of subsets {list(subsets)} -> {out}")
    click.echo(f"scans covered: {uids_path}")
