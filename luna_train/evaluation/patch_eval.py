"""Patch-level evaluation of trained runs: Dice, pooled Dice, precision and recall, with optional TTA,
ensembles and post-processing tuned on validation (``luna-train evaluate``).

The patches are those a run evaluates at the end of training (:func:`luna_train.data.splits.select_rows`):
the rows of the asked subsets at ``data.eval_scale`` (one per sample), sorted by (scale, index),
read by :class:`~luna_train.data.dataset.PatchDataset` and resized to ``data.train_size``.
Without TTA, ensemble or post-processing the numbers equal the run's ``summary.json``
(``test_dice``, ``test_pooled_dice``) for its test subsets: the raw mask is
:func:`~luna_train.evaluation.metrics.binarize` (``prob >= threshold``), as in training's
:func:`luna_train.training.loop.validate` and in :mod:`luna_train.inference.postprocess`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from luna_prep.errors import InputError
from luna_prep.sharing.cards import open_dataset
from luna_train.data.dataset import PatchDataset
from luna_train.data.loader import make_loader
from luna_train.data.splits import SplitConfig, select_rows
from luna_train.evaluation.metrics import Counts, binarize, confusion
from luna_train.inference.postprocess import PostprocessConfig, grid_with_threshold, postprocess, tune_postprocess
from luna_train.inference.trained_model import ProbabilityModel, load_model_like
from luna_train.inference.tta import tta_predict, tta_transforms
from luna_train.run_dir import RunDir

METRIC_KEYS = ("n_patches", "n_foreground", "dice", "pooled_dice", "precision", "recall", "tp", "fp", "fn")


# ----------------------------------------------------------------------------------------------
# rows and predictions


def eval_rows(cfg, subsets: Sequence[int], dataset: str | None = None, role: str = "test") -> pd.DataFrame:
    """Manifest rows of ``subsets`` at ``cfg.data.eval_scale``, as a run's val/test rows (select_rows).

    Every asked subset must have rows: an error names the store, the ``role`` (``"test"``: evaluated,
    ``"val"``: the validation rows post-processing is tuned on) and the missing subsets.
    """
    asked = tuple(int(s) for s in subsets)
    split = SplitConfig(**{f"{name}_subsets": asked if name == role else () for name in ("train", "val", "test")})
    store = cfg.data.dataset if dataset is None else str(dataset)
    what = "validation subsets (post-processing is tuned on them)" if role == "val" else "evaluated subsets"
    try:
        rows = getattr(select_rows(store, split, cfg.sampler.scale_weights, cfg.data.eval_scale,
                                   cfg.data.train_size), role)
    except InputError as exc:
        raise InputError(f"{store}: {what} {list(asked)}: {exc}") from None
    missing = sorted(set(asked) - {int(s) for s in pd.unique(rows["subset"])})
    if missing:
        raise InputError(f"{store}: {what} {list(asked)}: no patches of subsets {missing} at scale "
                         f"{cfg.data.eval_scale} in this store")
    return rows


def eval_dataset(cfg, subsets: Sequence[int], dataset: str | None = None, role: str = "test") -> PatchDataset:
    """The :class:`PatchDataset` a run evaluates ``subsets`` with (eval_scale rows resized to train_size)."""
    rows = eval_rows(cfg, subsets, dataset, role)
    return PatchDataset(cfg.data.dataset if dataset is None else str(dataset), rows, train_size=cfg.data.train_size)


def trained_on(model: ProbabilityModel, subsets: Sequence[int], role: str) -> list[str]:
    """Warnings for each model of ``model`` (one run or an ensemble's members) that trained on ``subsets``."""
    out = []
    for member in getattr(model, "members", [model]):
        seen = sorted(set(member.config.split.resolved()["train"]) & {int(s) for s in subsets})
        if seen:
            out.append(f"{member.run_dir} trained on subsets {seen}, which are {role}: its figures there are "
                       "optimistic")
    return out


def predict_fn(model_like: ProbabilityModel, tta: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, 1, D, H, W) images -> sigmoid probabilities; with ``tta`` averaged over flips and rotations."""
    if not tta:
        return model_like.probabilities
    return lambda x: tta_predict(model_like.probabilities, x, flips=True, rotations=True)


def iter_predictions(model_like: ProbabilityModel, dataset: PatchDataset, tta: bool = False, batch_size: int = 16,
                     num_workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(probability float32 (D, H, W), label bool (D, H, W)) of each patch of ``dataset``, in row order."""
    loader = make_loader(dataset, sampler=list(range(len(dataset))), batch_size=batch_size,
                         num_workers=num_workers, persistent_workers=False)
    fn = predict_fn(model_like, tta)
    with torch.no_grad():
        for batch in loader:
            probs = fn(batch["image"]).float().cpu().numpy()
            labels = (batch["label"] > 0.5).cpu().numpy()
            for p, t in zip(probs, labels):
                yield p[0], t[0]


def predict_patches(model_like: ProbabilityModel, dataset: PatchDataset, tta: bool = False, batch_size: int = 16,
                    num_workers: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Lists of probabilities and labels of every patch of ``dataset`` (see :func:`iter_predictions`)."""
    probs, labels = [], []
    for p, t in iter_predictions(model_like, dataset, tta, batch_size, num_workers):
        probs.append(p)
        labels.append(t)
    return probs, labels


# ----------------------------------------------------------------------------------------------
# metrics


def to_mask(prob: np.ndarray, how: float | PostprocessConfig) -> np.ndarray:
    """The mask of one probability map: :func:`binarize` at a threshold (as training) or :func:`postprocess`."""
    if isinstance(how, PostprocessConfig):
        return postprocess(prob, how)
    return binarize(np.asarray(prob), float(how))


@dataclass
class MetricAccumulator:
    """Running sums of per-patch Dice over foreground patches and pooled voxel TP/FP/FN."""

    n_patches: int = 0
    n_foreground: int = 0
    dice_sum: float = 0.0
    counts: Counts = field(default_factory=Counts)

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        c = confusion(pred, target)
        self.n_patches += 1
        if c.tp + c.fn > 0:  # the patch holds a nodule
            self.n_foreground += 1
            self.dice_sum += c.dice
        self.counts = self.counts + c

    def result(self) -> dict[str, Any]:
        c = self.counts
        empty = self.n_patches == 0
        return {"n_patches": self.n_patches, "n_foreground": self.n_foreground,
                "dice": self.dice_sum / self.n_foreground if self.n_foreground else None,
                "pooled_dice": None if empty else c.dice, "precision": None if empty else c.precision,
                "recall": None if empty else c.recall, "tp": c.tp, "fp": c.fp, "fn": c.fn}


def patch_metrics(probs: Iterable[np.ndarray], labels: Iterable[np.ndarray],
                  how: float | PostprocessConfig = 0.5) -> dict[str, Any]:
    """Metrics of paired probability maps and labels; ``how`` is a threshold or a :class:`PostprocessConfig`.

    ``dice``: mean per-patch Dice over the patches whose label holds foreground (None if none);
    ``pooled_dice``, ``precision``, ``recall``: from TP/FP/FN voxels summed over all patches
    (1.0 for an empty denominator, as :class:`~luna_train.evaluation.metrics.Counts`).
    """
    acc = MetricAccumulator()
    for p, t in zip(probs, labels, strict=True):
        acc.add(to_mask(p, how), t)
    return acc.result()


# ----------------------------------------------------------------------------------------------
# a whole run


def evaluate_run(run_dir: str | Path, *, dataset: str | None = None, subsets: Sequence[int] | None = None,
                 tta: bool = False, postprocess_tune: bool = False, ensemble: Sequence[str | Path] = (),
                 checkpoint: str = "best", batch_size: int | None = None, threshold: float | None = None,
                 grid: dict[str, Sequence[Any]] | None = None, device: torch.device | None = None,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate a run (or an ensemble) on ``subsets`` (default: the run's test subsets) and return a dict.

    ``postprocess_tune``: tune a :class:`PostprocessConfig` with :func:`tune_postprocess` on the run's
    validation subsets (same model, same TTA), freeze it, and report the evaluated subsets both raw
    (``prob >= threshold``) and post-processed (under ``"postprocessed"``).
    """
    say = log or (lambda msg: None)
    model = load_model_like(run_dir, ensemble, checkpoint, device)
    cfg = model.config
    store = str(dataset) if dataset is not None else RunDir(run_dir).dataset(cfg.data.dataset)
    attrs = open_dataset(store).attrs
    for member in model.run_dirs:
        RunDir(member).refuse_other_store(store, attrs)
    resolved = cfg.split.resolved()
    subsets = tuple(int(s) for s in (subsets if subsets is not None else resolved["test"]))
    if not subsets:
        raise InputError("no subsets to evaluate (the run has no test subsets; pass subsets)")
    thr = float(cfg.train.threshold if threshold is None else threshold)
    bs = int(batch_size or cfg.data.val_batch_size or cfg.data.batch_size)
    workers = cfg.data.num_workers
    members = [str(r) for r in model.run_dirs]
    out: dict[str, Any] = {
        "run_dir": str(run_dir), "checkpoint": checkpoint, "dataset": store, "subsets": list(subsets),
        "eval_scale": cfg.data.eval_scale, "train_size": cfg.data.train_size, "threshold": thr,
        "tta": bool(tta), "tta_transforms": len(tta_transforms(True, True)) if tta else 1,
        "ensemble": members, "device": str(model.device),
    }

    warnings = trained_on(model, subsets, "evaluated")
    pp_cfg: PostprocessConfig | None = None
    if postprocess_tune:
        val_subsets = resolved["val"]
        if not val_subsets:
            raise InputError("postprocess tuning needs the run's validation subsets, and it has none")
        overlap = sorted(set(val_subsets) & set(subsets))
        if overlap:
            raise InputError(f"evaluated subsets {list(subsets)} include validation subsets {overlap}: "
                             f"post-processing tuned on them would be evaluated on them")
        # an ensemble of cross-validation folds: the other folds trained on this fold's validation subsets
        warnings += trained_on(model, val_subsets, "the validation subsets post-processing is tuned on")
        val_ds = eval_dataset(cfg, val_subsets, store, role="val")
        say(f"tuning post-processing on validation subsets {list(val_subsets)} ({len(val_ds)} patches)")
        vp, vl = predict_patches(model, val_ds, tta, bs, workers)
        # the run's own threshold is always a candidate: a calibrated 0.85 must not lose to the grid's 0.7
        pp_cfg, score = tune_postprocess(vp, vl, grid_with_threshold(thr, grid))
        out["postprocess"] = {**asdict(pp_cfg), "val_subsets": list(val_subsets), "n_val_patches": len(vp),
                              "val_tuning_score": score,
                              "val_raw": patch_metrics(vp, vl, thr), "val_postprocessed": patch_metrics(vp, vl, pp_cfg)}
        del vp, vl

    for text in warnings:
        say(f"WARNING: {text}")
    out["warnings"] = warnings
    ds = eval_dataset(cfg, subsets, store)
    say(f"evaluating subsets {list(subsets)} ({len(ds)} patches, scale {cfg.data.eval_scale} -> "
        f"{cfg.data.train_size}){' with TTA' if tta else ''}")
    raw, post = MetricAccumulator(), MetricAccumulator()
    for p, t in iter_predictions(model, ds, tta, bs, workers):
        raw.add(binarize(p, thr), t)
        if pp_cfg is not None:
            post.add(postprocess(p, pp_cfg), t)
    out.update(raw.result())
    if pp_cfg is not None:
        out["postprocessed"] = post.result()
    return out


def freeze_postprocess(run_dir: str | Path, res: dict[str, Any]) -> Path | None:
    """Write the post-processing an :func:`evaluate_run` result tuned into the run's ``postprocess.json``
    (what ``detect`` and ``predict`` then use by default); None when nothing was tuned for this run alone."""
    if "postprocess" not in res or len(res["ensemble"]) > 1:
        return None
    pp = res["postprocess"]
    cfg = PostprocessConfig(**{k: pp[k] for k in ("threshold", "min_size", "closing_radius", "hysteresis_high")})
    scale, size = res["eval_scale"], res["train_size"]
    provenance = {"sizes_in": "model voxels", "model_voxel": 1.0 if size is None else scale / size,
                  "checkpoint": res["checkpoint"], "tta": res["tta"], "val_subsets": pp["val_subsets"],
                  "n_val_patches": pp["n_val_patches"], "val_tuning_score": pp["val_tuning_score"]}
    return RunDir(run_dir).write_postprocess(cfg, provenance)


# ----------------------------------------------------------------------------------------------
# reporting


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def format_report(res: dict[str, Any]) -> str:
    """A readable table of an :func:`evaluate_run` result."""
    cols = ["n_patches", "n_foreground", "dice", "pooled_dice", "precision", "recall", "tp", "fp", "fn"]
    rows = [(f"raw (p >= {res['threshold']:g})", res)]
    if "postprocessed" in res:
        rows.append(("post-processed", res["postprocessed"]))
    tta_text = f"on ({res['tta_transforms']:d} transforms)" if res["tta"] else "off"
    head = [f"run {res['run_dir']} ({res['checkpoint']}), dataset {res['dataset']}",
            f"subsets {res['subsets']}, scale {res['eval_scale']} -> {res['train_size']}, "
            f"TTA {tta_text}, "
            f"models {len(res['ensemble'])}"]
    if len(res["ensemble"]) > 1:
        head.append("ensemble: " + ", ".join(res["ensemble"]))
    head += [f"WARNING: {text}" for text in res.get("warnings", ())]
    if "postprocess" in res:
        pp = res["postprocess"]
        head.append(f"post-processing tuned on val subsets {pp['val_subsets']} ({pp['n_val_patches']} patches): "
                    f"threshold {pp['threshold']}, min_size {pp['min_size']}, closing_radius {pp['closing_radius']}, "
                    f"hysteresis_high {pp['hysteresis_high']} (val tuning score: mean of nodule-patch and pooled Dice "
                    f"{pp['val_tuning_score']:.4f})")
    width = max(len(r[0]) for r in rows)
    lines = ["", f"{'':{width}}  " + "  ".join(f"{c:>12}" for c in cols)]
    for name, m in rows:
        lines.append(f"{name:{width}}  " + "  ".join(f"{_fmt(m[c]):>12}" for c in cols))
    return "\n".join(head + lines)
