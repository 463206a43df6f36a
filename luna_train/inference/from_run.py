"""Inference from a run directory: the settings a run implies (its post-processing, its preprocessing,
its store) and the work behind ``luna-train predict`` and ``luna-train detect``.

Post-processing: the run's frozen ``postprocess.json`` (tuned by ``luna-train evaluate --postprocess``
on model patches, rescaled to the store's grid) when there is one, else threshold 0.5 and min-size 3;
a threshold or min-size given explicitly overrides either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from luna_prep.errors import UsageError
from luna_train.inference.detect import DetectConfig, window_batch
from luna_train.inference.postprocess import PostprocessConfig, rescaled
from luna_train.inference.trained_model import ProbabilityModel, load_model_like
from luna_train.run_dir import DEFAULT_POSTPROCESS, POSTPROCESS_FILE, RunDir
from luna_train.training.checkpoint import checkpoint_file

log = logging.getLogger("luna_train")


def scan_postprocess(run_dir: str | Path, model_voxel: float, threshold: float | None = None,
                     min_size: int | None = None, checkpoint: str = "best", tta: bool = False,
                     members: int = 1) -> tuple[PostprocessConfig, str]:
    """The post-processing of whole-scan maps on the store's grid, and where it came from (for the log).

    The tuned values are used even when they were tuned for another model than this one (another
    checkpoint, TTA or not, the run alone rather than an ensemble), with a WARNING in the source text
    that says so and how to tune for this model.
    """
    run = RunDir(run_dir)
    tuned = run.postprocess()
    base = DEFAULT_POSTPROCESS if tuned is None else rescaled(tuned, model_voxel)
    source = "defaults" if tuned is None else f"tuned ({Path(run_dir) / POSTPROCESS_FILE})"
    if tuned is not None:
        source += _tuned_for_another_model(run, checkpoint, tta, members)
    given = {k: v for k, v in (("threshold", threshold), ("min_size", min_size)) if v is not None}
    if given:
        source += ", overridden: " + ", ".join(f"{k}={v}" for k, v in given.items())
    return replace(base, **given), source


def _tuned_for_another_model(run: RunDir, checkpoint: str, tta: bool, members: int) -> str:
    """A WARNING when ``postprocess.json`` was tuned for another model than (checkpoint, tta, ensemble); else ''."""
    record = run.postprocess_tuned_for()
    name = checkpoint_file(checkpoint)
    differs = []
    if "checkpoint" in record and checkpoint_file(str(record["checkpoint"])) != name:
        differs.append(f"it was tuned for {checkpoint_file(str(record['checkpoint']))}, this is {name}")
    if "tta" in record and bool(record["tta"]) != bool(tta):
        differs.append(f"it was tuned {'with' if record['tta'] else 'without'} TTA, this runs "
                       f"{'with' if tta else 'without'}")
    if members > 1:
        differs.append(f"it was tuned for the run alone, this is an ensemble of {members}")
    if not differs:
        return ""
    if members > 1:  # an ensemble's tuning is reported by evaluate, not frozen into a run
        how = ("pass --threshold and --min-size (`luna-train evaluate ... --ensemble ... --postprocess` reports the "
               "ensemble's own)")
    else:
        flags = f"--checkpoint {name.removesuffix('.pt')}{' --tta' if tta else ''} --postprocess"
        how = f"tune for this model with `luna-train evaluate {run.path} {flags}`, or pass --threshold and --min-size"
    return f"; WARNING: {'; '.join(differs)} ({how})"


@dataclass
class RunModel:
    """A run's model with the detection settings it implies."""

    model: ProbabilityModel
    detect: DetectConfig
    postprocess_source: str


def load_run_model(run_dir: str | Path, ensemble: Sequence[str | Path] = (), checkpoint: str = "best",
                   tta: bool = False, threshold: float | None = None, min_size: int | None = None,
                   sw_batch_size: int | None = None, overlap: float = 0.5) -> RunModel:
    model = load_model_like(run_dir, ensemble, checkpoint)
    pp, source = scan_postprocess(run_dir, model.voxel_mm, threshold, min_size, checkpoint, tta,
                                  len(model.run_dirs))
    return RunModel(model, DetectConfig(overlap=overlap, tta=tta, postprocess=pp, sw_batch_size=sw_batch_size), source)


def predict_to_files(run: RunModel, run_dir: str | Path, scan: str | Path, out: str | Path,
                     candidates: str | Path | None = None, probabilities: str | Path | None = None,
                     dataset: str | None = None) -> dict:
    """Segment ``scan`` and write its mask, candidates (default: OUT's stem + .csv) and optionally the
    probability map; returns what was written. ``dataset`` replaces the run's preprocessing.json by
    the spec of that store."""
    import SimpleITK as sitk

    from luna_train.inference.outputs import (
        candidates_path,
        check_candidates_path,
        check_mask_path,
        check_probabilities_path,
        write_candidates,
        write_mask,
    )
    from luna_train.inference.predict_scan import predict_scan

    check_mask_path(out)
    candidates = candidates or candidates_path(out)
    check_candidates_path(candidates)
    if probabilities:
        check_probabilities_path(probabilities)
    cfg = run.model.config.data
    spec = RunDir(run_dir).preprocessing(dataset, cfg.eval_scale, cfg.train_size)
    pred = predict_scan(run.model, scan, spec, run.detect)
    written = {"mask": write_mask(pred.mask, out),
               "candidates": write_candidates(pred.candidates, candidates)}
    if probabilities:
        Path(probabilities).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(pred.probabilities, str(probabilities), useCompression=True)
        written["probabilities"] = Path(probabilities)
    return {**written, "n_voxels": int(sitk.GetArrayViewFromImage(pred.mask).sum()),
            "n_candidates": len(pred.candidates), "warnings": list(pred.warnings)}


def detect_store(model: ProbabilityModel, store, subsets: Sequence[int], cfg: DetectConfig, plots=None,
                 annotations=None) -> tuple[pd.DataFrame, list[str], list[dict]]:
    """Candidates of every finished scan of ``subsets`` in ``store``: (submission frame, seriesuids covered,
    per-scan seconds of reading, sliding window, candidate extraction, plotting and in total)."""
    from tqdm import tqdm

    from luna_train.evaluation.detection_plot import plot_scan_candidates
    from luna_train.inference.detect import SUBMISSION_COLUMNS, StageTimer, air_value, detect_volume

    if not store.has_volumes():
        raise UsageError(f"{store.root}: built without --volumes; rebuild with `luna-prep build --volumes`")
    scans = store.scans[(store.scans["status"] == "ok") & store.scans["subset"].isin(subsets)]
    if scans.empty:
        raise UsageError(f"{store.root}: no finished scans in subsets {list(subsets)}")
    truth = pd.read_csv(annotations) if annotations else None
    cfg = replace(cfg, air=air_value(tuple(store.attrs.hu_window), store.attrs.image_dtype))
    if model.device.type == "cuda":
        import torch

        torch.backends.cudnn.benchmark = True  # every window batch has one shape: autotune the convolutions once
    parts, timings = [], []
    for uid in tqdm(scans["seriesuid"].tolist(), desc="scans", unit="scan"):
        timer, t0 = StageTimer(), time.perf_counter()
        with timer.stage("read"):
            volume = store.read_volume(uid)
        candidates, _ = detect_volume(model, volume, cfg, timer)
        parts.append(candidates)
        with timer.stage("plot"):
            if plots and len(candidates):
                plot_scan_candidates(volume, candidates, Path(plots) / f"{uid}.png", annotations=truth,
                                     hu_window=tuple(store.attrs.hu_window))
        row = {"seriesuid": uid, "shape": list(volume.image.shape), **{f"{k}_s": v for k, v in timer.seconds.items()},
               "total_s": time.perf_counter() - t0}
        timings.append(row)
        log.info("%s: %s", uid, timing_text(row))
    submission = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SUBMISSION_COLUMNS))
    return submission, scans["seriesuid"].tolist(), timings


STAGES = ("read", "sliding_window", "candidates", "plot")


def timing_text(row: dict) -> str:
    """``read 0.41 s, sliding window 2.10 s, candidates 0.33 s, plot 0.00 s (total 2.85 s)``."""
    parts = ", ".join(f"{k.replace('_', ' ')} {row[f'{k}_s']:.2f} s" for k in STAGES)
    return f"{parts} (total {row['total_s']:.2f} s)"


def mean_timings(timings: list[dict]) -> dict:
    """Mean seconds per scan of each stage and in total."""
    keys = [f"{k}_s" for k in STAGES] + ["total_s"]
    return {k: sum(t[k] for t in timings) / len(timings) for k in keys} if timings else {}


def detect_to_files(run: RunModel, run_dir: str | Path, dataset: str | None, subsets: Sequence[int] | None,
                    out: str | Path | None, plots=None, annotations=None) -> dict:
    """Detect over the store (``dataset`` or the run's) and write SUBMISSION.csv and SUBMISSION_seriesuids.csv;
    returns what was written, with the seconds per scan of each stage (``timings``, ``mean_timings``)."""
    from luna_prep.sharing.cards import open_dataset

    subsets = tuple(subsets or run.model.config.split.test_subsets)
    location = dataset or RunDir(run_dir).dataset(run.model.config.data.dataset)
    store = open_dataset(location)
    for member in run.model.run_dirs:
        RunDir(member).refuse_other_store(location, store.attrs)
    submission, uids, timings = detect_store(run.model, store, subsets, run.detect, plots, annotations)
    out = Path(out) if out else Path(run_dir) / "submission.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    submission.to_csv(out, index=False)
    uids_path = out.with_name(f"{out.stem}_seriesuids.csv")
    uids_path.write_text("".join(f"{u}\n" for u in uids))
    return {"submission": out, "seriesuids": uids_path, "n_candidates": len(submission), "n_scans": len(uids),
            "subsets": list(subsets), "device": device_name(run.model.device),
            "sw_batch_size": window_batch(run.detect, run.model.device), "overlap": run.detect.overlap,
            "timings": timings,
            "mean_timings": mean_timings(timings)}


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
