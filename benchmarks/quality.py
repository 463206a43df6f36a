"""Model quality of a training recipe: train a config, then score it on patches and on whole scans.

    python benchmarks/quality.py --config configs/demo.yaml [--store STORE --annotations CSV]
        [--scans 30] [--seed 0] [--difficulty luna|easy] [--set KEY=VALUE ...] [--out DIR] [--no-detect]
        [--json OUT]

Without --store, a store is built first from synthetic scans of seed 0 (all subsets, with
volumes): the chest phantom by default (``--difficulty luna``, its rendered nodule shapes as
masks), or `make demo`'s easy scans (``--difficulty easy``).
The run trains on the config's train subsets, keeps its best
checkpoint by validation Dice, and is then scored on the validation and test subsets:

- per-patch Dice (mean over patches holding a nodule), pooled Dice, precision and recall, as
  :func:`luna_train.evaluation.patch_eval.evaluate_run` gives them (raw: ``prob >= threshold``, no TTA);
- on the patches holding a nodule only: pooled precision and recall, the mean symmetric surface
  distance in mm (MONAI's ``compute_average_surface_distance``) and the mean *signed* surface
  distance in model voxels (> 0: the prediction's boundary lies outside the truth's, i.e.
  over-segmentation; < 0: under-segmentation; 0: no boundary bias);
- the CPM of :func:`luna_train.inference.detect.detect_volume` + :func:`compute_froc` on the test scans;
- with ``--calibrate``: the same raw figures at thresholds 0.3-0.95 and at the one chosen on validation
  (the highest val Dice whose boundary bias is within 0.3 voxel), so recipes compare at their own threshold.

Each subset's patches go through the model once; every figure above is taken from that pass.

``--set train.seed=S`` changes the seed of training (sampler, augmentation, initialisation).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from luna_prep.format.reader import PatchStore
from luna_train.config import TrainConfig, load_config
from luna_train.evaluation.froc import compute_froc, load_luna_csv
from luna_train.evaluation.metrics import binarize
from luna_train.evaluation.patch_eval import MetricAccumulator, eval_dataset, iter_predictions
from luna_train.inference.detect import DetectConfig, air_value, detect_volume
from luna_train.inference.trained_model import TrainedModel, load_trained_model
from luna_train.training.run import run_training

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", category=FutureWarning, module="monai")


def build_demo_store(work: Path, scans: int, seed: int, difficulty: str = "luna") -> tuple[str, str]:
    """(store, annotations.csv) of ``scans`` synthetic scans of ``difficulty``, built with volumes as `make demo`
    builds its store; ``luna`` scans with their rendered nodule shapes as masks (``--masks labels``)."""
    from luna_prep.build import BuildConfig, run_build
    from luna_prep.synthetic.scans import synthesize

    data = synthesize(work / "luna16", n_scans=scans, seed=seed, difficulty=difficulty)
    store = str(work / "patches.zarr")
    masks = "labels" if difficulty == "luna" else "sphere"
    run_build(BuildConfig(data_root=str(data.root), out=store, volumes=True, masks=masks), workers=2,
              progress=False, manifests_dir=work / "manifests")
    return store, str(data.annotations_csv)


# ----------------------------------------------------------------------------------------------
# boundary metrics of one patch


def _edges(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: the mask minus its erosion (the convention of MONAI's surface distances)."""
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask)


def signed_surface_distance(pred: np.ndarray, target: np.ndarray) -> float | None:
    """Mean signed distance (voxels) between the surfaces of ``pred`` and ``target``, both ways.

    Each surface voxel of the prediction counts its distance to the target's surface, positive
    when it lies outside the target; each surface voxel of the target counts its distance to the
    prediction's surface, positive when it lies inside the prediction. A prediction grown by one
    voxel all round gives +1, one shrunk by a voxel -1, a perfect one 0. None if a mask is empty.
    """
    from scipy import ndimage

    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if not pred.any() or not target.any():
        return None
    pe, te = _edges(pred), _edges(target)
    to_target = ndimage.distance_transform_edt(~te)[pe] * np.where(target[pe], -1.0, 1.0)
    to_pred = ndimage.distance_transform_edt(~pe)[te] * np.where(pred[te], 1.0, -1.0)
    return float((to_target.sum() + to_pred.sum()) / (to_target.size + to_pred.size))


def surface_distance_mm(pred: np.ndarray, target: np.ndarray, spacing_mm: float) -> float | None:
    """Symmetric mean surface distance (mm) of MONAI; None if a mask is empty."""
    from monai.metrics import compute_average_surface_distance

    if not np.any(pred) or not np.any(target):
        return None
    as_batch = lambda m: torch.from_numpy(np.asarray(m, bool))[None, None]  # noqa: E731
    value = compute_average_surface_distance(as_batch(pred), as_batch(target), include_background=True,
                                             symmetric=True, spacing=float(spacing_mm))
    return float(value.reshape(-1)[0])


# ----------------------------------------------------------------------------------------------
# patches and scans


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


class NodulePatchScore:
    """Pooled precision/recall/Dice and surface distances over the patches holding a nodule, added one
    thresholded patch at a time."""

    def __init__(self, voxel_mm: float):
        self.voxel_mm = voxel_mm
        self.acc, self.asd, self.signed, self.missed = MetricAccumulator(), [], [], 0

    def add(self, pred: np.ndarray, label: np.ndarray) -> None:
        if not label.any():
            return
        self.acc.add(pred, label)
        d_mm, d_signed = surface_distance_mm(pred, label, self.voxel_mm), signed_surface_distance(pred, label)
        if d_signed is None:
            self.missed += 1
            return
        self.asd.append(d_mm)
        self.signed.append(d_signed)

    def result(self) -> dict[str, Any]:
        res = self.acc.result()
        return {"n_patches": res["n_patches"], "pooled_dice": res["pooled_dice"], "precision": res["precision"],
                "recall": res["recall"], "mean_surface_distance_mm": _mean(self.asd),
                "mean_signed_surface_distance_voxels": _mean(self.signed), "voxel_mm": self.voxel_mm,
                "n_empty_predictions": self.missed}


SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


class ThresholdSweep:
    """Raw figures of (probability, label) patches at each of ``thresholds``, added one patch at a time:
    per-patch ``dice`` (mean over the patches holding a nodule) and ``pooled_dice`` of all patches; on the
    patches holding a nodule, pooled ``precision``/``recall`` and the mean ``signed_sd`` (voxels,
    :func:`signed_surface_distance`)."""

    def __init__(self, thresholds: Sequence[float] = SWEEP):
        self.thresholds = tuple(thresholds)
        self.every = {t: MetricAccumulator() for t in self.thresholds}
        self.nodule = {t: MetricAccumulator() for t in self.thresholds}
        self.signed: dict[float, list[float]] = {t: [] for t in self.thresholds}

    def add(self, prob: np.ndarray, label: np.ndarray) -> None:
        for t in self.thresholds:
            pred = binarize(prob, t)
            self.every[t].add(pred, label)
            if label.any():
                self.nodule[t].add(pred, label)
                d = signed_surface_distance(pred, label)
                if d is not None:
                    self.signed[t].append(d)

    def result(self) -> list[dict[str, Any]]:
        rows = []
        for t in self.thresholds:
            a, n = self.every[t].result(), self.nodule[t].result()
            rows.append({"threshold": t, "dice": a["dice"], "pooled_dice": a["pooled_dice"],
                         "precision": n["precision"], "recall": n["recall"], "signed_sd": _mean(self.signed[t])})
        return rows


def threshold_sweep(pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                    thresholds: Sequence[float] = SWEEP) -> list[dict[str, Any]]:
    """:class:`ThresholdSweep` of ``pairs``."""
    sweep = ThresholdSweep(thresholds)
    for prob, label in pairs:
        sweep.add(prob, label)
    return sweep.result()


def calibrated_threshold(val_rows: Sequence[dict[str, Any]], max_bias: float = 0.3) -> float:
    """The rule of docs/training.md, on validation only: the highest per-patch Dice among the thresholds whose
    boundary bias is within ``max_bias`` voxel; if none is, the threshold of the smallest bias."""
    rows = [r for r in val_rows if r["dice"] is not None and r["signed_sd"] is not None]
    if not rows:
        raise ValueError("no threshold predicts any nodule voxel on validation")
    calm = [r for r in rows if abs(r["signed_sd"]) <= max_bias]
    best = (max(calm, key=lambda r: r["dice"]) if calm else min(rows, key=lambda r: abs(r["signed_sd"])))
    return float(best["threshold"])


def calibrated_quality(val: Sequence[dict[str, Any]], test: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The threshold :func:`calibrated_threshold` picks on the validation sweep, both sweeps' rows at it,
    and the sweeps."""
    thr = calibrated_threshold(val)
    pick = lambda rows: next(r for r in rows if r["threshold"] == thr)  # noqa: E731
    return {"threshold": thr, "val": pick(val), "test": pick(test), "val_sweep": list(val), "test_sweep": list(test)}


def patch_quality(model: TrainedModel, subsets: Sequence[int], spacing_mm: float, sweep: bool = False,
                  store: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """One inference pass over the patches of ``subsets`` (raw, no TTA): the figures of
    :func:`~luna_train.evaluation.patch_eval.evaluate_run` at the run's threshold, the nodule-patch
    metrics under ``"nodule_patches"``, and with ``sweep`` the :class:`ThresholdSweep` rows."""
    cfg, thr = model.config, float(model.config.train.threshold)
    raw, nodule = MetricAccumulator(), NodulePatchScore(spacing_mm * model.voxel_mm)
    rows = ThresholdSweep() if sweep else None
    dataset = eval_dataset(cfg, subsets, store)
    for prob, label in iter_predictions(model, dataset, batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
                                        num_workers=cfg.data.num_workers):
        pred = binarize(prob, thr)
        raw.add(pred, label)
        nodule.add(pred, label)
        if rows is not None:
            rows.add(prob, label)
    res = raw.result()
    keep = ("n_patches", "n_foreground", "dice", "pooled_dice", "precision", "recall")
    return ({"subsets": list(subsets), **{k: res[k] for k in keep}, "nodule_patches": nodule.result()},
            None if rows is None else rows.result())


def detection_quality(model: TrainedModel, store: str, subsets: Sequence[int], annotations: str,
                      bootstrap: int = 200) -> dict[str, Any]:
    """CPM (and counts) of sliding-window detection on the scans of ``subsets`` (default DetectConfig)."""
    reader = PatchStore(store)
    scans = reader.scans[(reader.scans["status"] == "ok") & reader.scans["subset"].isin(list(subsets))]
    t0 = time.perf_counter()
    cfg = DetectConfig(air=air_value(tuple(reader.attrs.hu_window), reader.attrs.image_dtype))  # pad as the store
    parts = [detect_volume(model, reader.read_volume(uid), cfg)[0] for uid in scans["seriesuid"]]
    submission = pd.concat(parts, ignore_index=True)
    froc = compute_froc(submission, load_luna_csv(annotations), None, scans["seriesuid"].tolist(),
                        n_bootstrap=bootstrap)
    out = froc.to_json_dict()
    keep = ("cpm", "cpm_ci", "sensitivities", "n_scans", "n_nodules", "n_hits", "n_false_positives", "n_candidates")
    return {**{k: out[k] for k in keep}, "seconds": round(time.perf_counter() - t0, 1)}


# ----------------------------------------------------------------------------------------------


def measure(cfg: TrainConfig, run_dir: Path, annotations: str | None, detect: bool = True,
            calibrate: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir`` and score it (see the module docstring)."""
    summary = run_training(cfg, run_dir)
    history = pd.read_csv(run_dir / "metrics.csv")
    model = load_trained_model(run_dir)
    spacing = float(PatchStore(cfg.data.dataset).attrs.spacing_mm)
    split = cfg.split.resolved()
    device = torch.device(summary["device"])
    result: dict[str, Any] = {
        "device": (summary["device_name"] if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"),
        "date": time.strftime("%Y-%m-%d"), "train_seconds": round(float(history["seconds"].sum()), 1),
        "run_seconds": summary["seconds"], "steps": summary["steps"], "epochs_run": summary["epochs_run"],
        "best_epoch": summary["best_epoch"], "parameters": summary["parameters"], "seed": cfg.train.seed,
        "val_dice_curve": [None if math.isnan(v) else round(float(v), 4) for v in history["val_dice"]],
        "run_dir": str(run_dir),
    }
    result["val"], val_sweep = patch_quality(model, split["val"], spacing, calibrate)
    result["test"], test_sweep = patch_quality(model, split["test"], spacing, calibrate)
    if calibrate:
        result["calibrated"] = calibrated_quality(val_sweep, test_sweep)
    if detect and annotations:
        result["detection"] = detection_quality(model, cfg.data.dataset, split["test"], annotations)
    return result


def headline(r: dict[str, Any]) -> str:
    """One line of the figures the recipe targets."""
    def f(v):
        return "-" if v is None else f"{v:.3f}"
    cpm = r.get("detection", {}).get("cpm")
    return (f"val Dice {f(r['val']['dice'])}, test Dice {f(r['test']['dice'])}, "
            f"test pooled {f(r['test']['pooled_dice'])}, "
            f"nodule-patch precision {f(r['test']['nodule_patches']['precision'])} recall "
            f"{f(r['test']['nodule_patches']['recall'])}, signed surface distance val "
            f"{f(r['val']['nodule_patches']['mean_signed_surface_distance_voxels'])} test "
            f"{f(r['test']['nodule_patches']['mean_signed_surface_distance_voxels'])} voxel, MSD test "
            f"{f(r['test']['nodule_patches']['mean_surface_distance_mm'])} mm, CPM {f(cpm)}, "
            f"{r['train_seconds']} s training ({r['steps']} steps)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    ap.add_argument("--store", help="an existing store (built with --volumes for the CPM)")
    ap.add_argument("--annotations", help="annotations.csv of the store's scans (for the CPM)")
    ap.add_argument("--scans", type=int, default=30, help="synthetic scans when building a store")
    ap.add_argument("--seed", type=int, default=0, help="seed of the synthetic scans when building a store")
    ap.add_argument("--difficulty", choices=["luna", "easy"], default="luna",
                    help="synthetic scans when building a store: the chest phantom (default) or easy (make demo's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, help="work folder (store, run) [default: a temporary folder]")
    ap.add_argument("--no-detect", action="store_true", help="skip the scan-level detection and CPM")
    ap.add_argument("--calibrate", action="store_true",
                    help="also sweep thresholds and report val/test at the one chosen on validation")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="luna-quality-"))
    if (work / "run").exists():  # before building a store, which takes minutes
        ap.error(f"{work / 'run'} exists: pass another --out")
    work.mkdir(parents=True, exist_ok=True)
    store, annotations = args.store, args.annotations
    if store is None:
        store, annotations = build_demo_store(work, args.scans, args.seed, args.difficulty)
    cfg = load_config(args.config, [*args.overrides, f"data.dataset={store}", "logging.progress=false"])
    result = {"config": str(args.config), "overrides": args.overrides, "store": store,
              **measure(cfg, work / "run", annotations, detect=not args.no_detect, calibrate=args.calibrate)}
    print(json.dumps(result, indent=2))
    print(headline(result), file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
