"""Overlap metrics of binary segmentations: the one :func:`binarize` and the one Dice of the package.

Masks are anything ``np.asarray`` takes (torch tensors too, moved to the CPU); non-zero is
foreground. :func:`batch_counts` and :func:`dice_from_counts` also keep torch tensors on their
device (training's validation). Conventions for empty denominators: Dice is 1.0 when prediction
and target are both empty, precision is 1.0 when nothing is predicted, recall is 1.0 when there
is nothing to find.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


def binarize(prob: Any, threshold: float) -> Any:
    """The mask ``prob >= threshold`` of a probability map (numpy array or torch tensor, same kind back).

    The one thresholding convention of training metrics, post-processing, detection and predict
    (as MONAI's ``AsDiscrete(threshold=...)``).
    """
    return prob >= threshold


def dice_from_counts(tp: Any, fp: Any, fn: Any) -> Any:
    """Dice 2 TP / (2 TP + FP + FN), 1.0 where the denominator is 0.

    Python numbers give a float; numpy arrays a float64 array; torch tensors a float64 tensor on
    their device.
    """
    if isinstance(tp, torch.Tensor):
        tp, fp, fn = (torch.as_tensor(v, dtype=torch.float64, device=tp.device) for v in (tp, fp, fn))
        den = 2 * tp + fp + fn
        return torch.where(den > 0, 2 * tp / den.clamp(min=1), torch.ones_like(den))
    if np.ndim(tp):
        den = 2 * np.asarray(tp) + fp + fn
        return np.where(den == 0, 1.0, 2.0 * np.asarray(tp) / np.maximum(den, 1))
    den = 2 * tp + fp + fn
    return 1.0 if den == 0 else 2 * tp / den


@dataclass(frozen=True)
class Counts:
    """Voxel counts of true positives, false positives and false negatives (summable)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def dice(self) -> float:
        return dice_from_counts(self.tp, self.fp, self.fn)

    @property
    def precision(self) -> float:
        den = self.tp + self.fp
        return 1.0 if den == 0 else self.tp / den

    @property
    def recall(self) -> float:
        den = self.tp + self.fn
        return 1.0 if den == 0 else self.tp / den

    def to_dict(self) -> dict[str, float]:
        """Counts and the three ratios, e.g. for logging."""
        return {**asdict(self), "dice": self.dice, "precision": self.precision,
                "recall": self.recall}


def as_bool(a: Any) -> np.ndarray:
    """A mask as a numpy bool array (torch tensors are detached and moved to the CPU)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a).astype(bool, copy=False)


def confusion(pred: Any, target: Any) -> Counts:
    """TP, FP and FN voxel counts of one prediction against its target (same shape)."""
    p, t = as_bool(pred), as_bool(target)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: pred {p.shape} vs target {t.shape}")
    tp = int(np.count_nonzero(p & t))
    return Counts(tp=tp, fp=int(np.count_nonzero(p)) - tp, fn=int(np.count_nonzero(t)) - tp)


def dice(pred: Any, target: Any) -> float:
    """Dice of one patch: 2|P & T| / (|P| + |T|), 1.0 when both are empty."""
    return confusion(pred, target).dice


def batch_counts(pred: Any, target: Any) -> tuple[Any, Any, Any]:
    """Per-item (TP, FP, FN) of a batch of masks (first axis = item, e.g. (B, 1, D, H, W)).

    Two torch tensors give int64 tensors on their device; anything else gives numpy arrays.
    """
    if isinstance(pred, torch.Tensor) and isinstance(target, torch.Tensor):
        if pred.shape != target.shape:
            raise ValueError(f"shape mismatch: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
        p, t = pred.bool().flatten(1), target.bool().flatten(1)
        tp = (p & t).sum(1)
        return tp, p.sum(1) - tp, t.sum(1) - tp
    p, t = as_bool(pred), as_bool(target)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: pred {p.shape} vs target {t.shape}")
    p, t = p.reshape(len(p), -1), t.reshape(len(t), -1)
    tp = np.count_nonzero(p & t, axis=1)
    return tp, np.count_nonzero(p, axis=1) - tp, np.count_nonzero(t, axis=1) - tp


def batch_dice(pred: Any, target: Any) -> np.ndarray:
    """Per-item Dice of a batch (first axis = item, e.g. (B, 1, D, H, W)), as a (B,) numpy array."""
    return dice_from_counts(*batch_counts(as_bool(pred), as_bool(target)))


def mean_dice(preds: Iterable[Any], targets: Iterable[Any]) -> float:
    """Mean of per-patch Dice over paired patches."""
    values = [dice(p, t) for p, t in zip(preds, targets, strict=True)]
    if not values:
        raise ValueError("no patches")
    return float(np.mean(values))


def pooled_counts(preds: Iterable[Any], targets: Iterable[Any]) -> Counts:
    """TP/FP/FN summed over all paired patches."""
    total = Counts()
    for p, t in zip(preds, targets, strict=True):
        total = total + confusion(p, t)
    return total


def pooled_dice(preds: Iterable[Any], targets: Iterable[Any]) -> float:
    """Voxel Dice of all patches pooled: 2 sum TP / (2 sum TP + sum FP + sum FN)."""
    return pooled_counts(preds, targets).dice
