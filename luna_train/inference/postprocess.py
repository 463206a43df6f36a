"""Post-processing of probability maps into masks, and tuning of its parameters on validation data.

Steps of :func:`postprocess`, in order:

1. threshold: :func:`~luna_train.evaluation.metrics.binarize` (``prob >= threshold``), then ``& within``;
2. hysteresis (optional): keep only the connected regions of step 1 that contain a voxel with
   ``prob >= hysteresis_high``;
3. morphological closing with a ball of ``closing_radius`` voxels (the array is padded first, so
   objects touching the border are not eroded away), then ``& within`` again;
4. removal of connected components smaller than ``min_size`` voxels.

Connected components use full connectivity (26 neighbours in 3D). The parameters are meant to be
chosen once with :func:`tune_postprocess` on the validation split and then frozen for the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from itertools import product
from typing import Any

import numpy as np
from scipy import ndimage

from luna_train.evaluation.metrics import binarize, dice, pooled_dice

DEFAULT_GRID: dict[str, list[Any]] = {
    "threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
    "min_size": [0, 10, 30],
    "closing_radius": [0, 1],
    "hysteresis_high": [None, 0.8],
}


def grid_with_threshold(threshold: float, grid: dict[str, Sequence[Any]] | None = None) -> dict[str, list[Any]]:
    """``grid`` (default :data:`DEFAULT_GRID`) with ``threshold``, the run's calibrated one, among its thresholds."""
    out = {k: list(v) for k, v in (DEFAULT_GRID if grid is None else grid).items()}
    out["threshold"] = sorted({*out.get("threshold", []), float(threshold)})
    return out


@dataclass(frozen=True)
class PostprocessConfig:
    """Parameters of :func:`postprocess` (the defaults: plain thresholding at 0.5)."""

    threshold: float = 0.5
    min_size: int = 0
    closing_radius: int = 0
    hysteresis_high: float | None = None


def ball(radius: int, ndim: int = 3) -> np.ndarray:
    """Boolean ball structuring element: voxels within Euclidean distance ``radius`` of the centre."""
    grid = np.indices((2 * radius + 1,) * ndim) - radius
    return (grid**2).sum(axis=0) <= radius**2


def _structure(ndim: int) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, ndim)


def hysteresis(mask: np.ndarray, prob: np.ndarray, high: float) -> np.ndarray:
    """Connected regions of ``mask`` that hold at least one voxel with ``prob >= high``."""
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim))
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[labels[mask & binarize(prob, high)]] = True
    seeded[0] = False
    return seeded[labels]


def closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing with a ball of ``radius`` voxels; no erosion from the array border."""
    if radius <= 0:
        return mask
    padded = np.pad(mask, radius)
    closed = ndimage.binary_closing(padded, structure=ball(radius, mask.ndim))
    return closed[tuple(slice(radius, -radius) for _ in range(mask.ndim))]


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its connected components of fewer than ``min_size`` voxels."""
    if min_size <= 1:
        return mask
    labels, _ = ndimage.label(mask, structure=_structure(mask.ndim))
    big = np.bincount(labels.ravel()) >= min_size
    big[0] = False
    return big[labels]


def _check(prob: np.ndarray, within: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    prob = np.asarray(prob)
    if within is not None:
        within = np.asarray(within, dtype=bool)
        if within.shape != prob.shape:
            raise ValueError(f"within {within.shape} does not match prob {prob.shape}")
    return prob, within


def _seeded(prob: np.ndarray, within: np.ndarray | None, threshold: float,
            high: float | None) -> np.ndarray:
    """Steps 1-2."""
    mask = binarize(prob, threshold)
    if within is not None:
        mask &= within
    return mask if high is None else hysteresis(mask, prob, high)


def _closed(mask: np.ndarray, within: np.ndarray | None, radius: int) -> np.ndarray:
    """Step 3."""
    mask = closing(mask, radius)
    return mask & within if within is not None and radius > 0 else mask


def postprocess(prob: np.ndarray, cfg: PostprocessConfig = PostprocessConfig(),
                within: np.ndarray | None = None) -> np.ndarray:
    """Binary mask (bool, shape of ``prob``) from a probability map; zero outside ``within``."""
    prob, within = _check(prob, within)
    mask = _seeded(prob, within, cfg.threshold, cfg.hysteresis_high)
    return remove_small(_closed(mask, within, cfg.closing_radius), cfg.min_size)


def _balanced_dice(preds: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> float:
    fg = [dice(p, t) for p, t in zip(preds, targets) if np.any(t)]
    return float(0.5 * ((np.mean(fg) if fg else 1.0) + pooled_dice(preds, targets)))


def tune_postprocess(probs: Sequence[np.ndarray], targets: Sequence[np.ndarray],
                     grid: dict[str, Sequence[Any]] | None = None,
                     within: Sequence[np.ndarray | None] | None = None,
                     ) -> tuple[PostprocessConfig, float]:
    """Grid search maximizing a balanced Dice; returns the best config and its score.

    The score is the mean of (a) the mean per-patch Dice over patches that hold a nodule (the
    headline metric) and (b) the voxel-pooled Dice over all patches, which charges false
    positives on empty patches. (a) alone would never filter anything; the mean per-patch Dice
    over all patches (empty ones scoring 1 when nothing is predicted) rewards deleting small
    nodules: on the demo it chose min_size 30 and cut test recall to 0.1.

    Run it on validation patches only and freeze the result for the test split. ``grid`` maps
    :class:`PostprocessConfig` field names to candidate values (default :data:`DEFAULT_GRID`;
    fields it leaves out keep their default). Ties go to the first config in grid order
    (threshold, then hysteresis_high, closing_radius, min_size, each in the order given).
    """
    if len(probs) != len(targets) or not probs:
        raise ValueError("need as many targets as probability maps, and at least one")
    grid = dict(DEFAULT_GRID if grid is None else grid)
    names = {f.name for f in fields(PostprocessConfig)}
    if set(grid) - names:
        raise ValueError(f"unknown grid keys {sorted(set(grid) - names)}; allowed {sorted(names)}")
    base = PostprocessConfig()
    values = {n: list(grid.get(n, [getattr(base, n)])) for n in names}
    checked = [_check(p, w) for p, w in zip(probs, within or [None] * len(probs))]
    best: tuple[PostprocessConfig, float] | None = None
    for thr, high in product(values["threshold"], values["hysteresis_high"]):
        seeded = [_seeded(p, w, thr, high) for p, w in checked]
        for radius in values["closing_radius"]:
            closed = [_closed(m, w, radius) for m, (_, w) in zip(seeded, checked)]
            for size in values["min_size"]:
                score = _balanced_dice([remove_small(m, size) for m in closed], targets)
                if best is None or score > best[1]:
                    cfg = replace(base, threshold=thr, hysteresis_high=high,
                                  closing_radius=radius, min_size=size)
                    best = (cfg, score)
    assert best is not None
    return best


def rescaled(cfg: PostprocessConfig, voxels: float) -> PostprocessConfig:
    """``cfg`` (sizes in voxels of some grid) for a grid whose voxels are ``1 / voxels`` as wide.

    Post-processing tuned on model patches (one model voxel = ``voxels`` store voxels per axis) applies
    to store-grid maps with ``min_size`` times ``voxels**3`` and ``closing_radius`` times ``voxels``.
    """
    if voxels == 1:
        return cfg
    return replace(cfg, min_size=int(round(cfg.min_size * voxels**3)),
                   closing_radius=int(round(cfg.closing_radius * voxels)))
