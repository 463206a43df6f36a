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

from luna_train.evaluation.metrics import binarize, dice_from_counts

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
    return _sized_masks(mask, [min_size])[0]


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


@dataclass
class _TuningPatch:
    """One validation patch cut to the box where any grid config can predict foreground.

    Every step of :func:`postprocess` stays inside ``threshold``'s mask at the lowest threshold grown
    by the closing radius, so the cut (that box plus ``margin``, clipped to the patch) gives the same
    masks as the whole patch; the target voxels outside it count only in ``target_total``.
    """

    prob: np.ndarray | None  # None: nothing reaches the lowest threshold
    within: np.ndarray | None
    target: np.ndarray | None
    target_total: int

    @classmethod
    def cut(cls, prob: np.ndarray, within: np.ndarray | None, target: np.ndarray, lowest: float,
            margin: int) -> _TuningPatch:
        target = np.asarray(target, dtype=bool)
        if target.shape != prob.shape:
            raise ValueError(f"target {target.shape} does not match prob {prob.shape}")
        mask = binarize(prob, lowest)
        if within is not None:
            mask &= within
        if not mask.any():
            return cls(None, None, None, int(target.sum()))
        box = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in np.nonzero(mask))
        return cls(prob[box], None if within is None else within[box], target[box], int(target.sum()))

    def counts(self, mask: np.ndarray | None) -> tuple[int, int, int]:
        """(TP, FP, FN) of ``mask`` (on the cut; None: predicts nothing) against the whole target."""
        if mask is None:
            return 0, 0, self.target_total
        tp = int(np.count_nonzero(mask & self.target))
        return tp, int(np.count_nonzero(mask)) - tp, self.target_total - tp


def _sized_masks(mask: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    """``mask`` without its components of fewer than ``sizes[i]`` voxels, for each i, labelling the
    components once (``sizes[i] <= 1`` keeps ``mask`` as it is)."""
    if all(s <= 1 for s in sizes):
        return [mask] * len(sizes)
    labels, _ = ndimage.label(mask, structure=_structure(mask.ndim))
    voxels = np.bincount(labels.ravel())
    out = []
    for size in sizes:
        if size <= 1:
            out.append(mask)
            continue
        big = voxels >= size
        big[0] = False
        out.append(big[labels])
    return out


def _balanced_score(counts: np.ndarray) -> float:
    """Mean of the per-patch Dice over patches with a nodule and the pooled Dice, from per-patch (TP, FP, FN)."""
    tp, fp, fn = counts.T
    has_fg = (tp + fn) > 0
    fg = dice_from_counts(tp[has_fg], fp[has_fg], fn[has_fg])
    pooled = dice_from_counts(int(tp.sum()), int(fp.sum()), int(fn.sum()))
    return float(0.5 * ((float(np.mean(fg)) if has_fg.any() else 1.0) + pooled))


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

    Each patch is first cut to where the lowest threshold predicts anything (see
    :class:`_TuningPatch`), and the components of each closed mask are labelled once for all
    ``min_size`` values: the scores equal :func:`postprocess` on the whole patches, at a fraction of
    the cost (most validation patches predict little or nothing).
    """
    if len(probs) != len(targets) or not probs:
        raise ValueError("need as many targets as probability maps, and at least one")
    grid = dict(DEFAULT_GRID if grid is None else grid)
    names = {f.name for f in fields(PostprocessConfig)}
    if set(grid) - names:
        raise ValueError(f"unknown grid keys {sorted(set(grid) - names)}; allowed {sorted(names)}")
    base = PostprocessConfig()
    values = {n: list(grid.get(n, [getattr(base, n)])) for n in names}
    lowest, margin = min(values["threshold"]), max(0, *values["closing_radius"]) + 1
    patches = [_TuningPatch.cut(*_check(p, w), t, lowest, margin)
               for p, w, t in zip(probs, within or [None] * len(probs), targets)]
    sizes = values["min_size"]
    best: tuple[PostprocessConfig, float] | None = None
    for thr, high in product(values["threshold"], values["hysteresis_high"]):
        seeded = [None if c.prob is None else _seeded(c.prob, c.within, thr, high) for c in patches]
        for radius in values["closing_radius"]:
            counts = np.zeros((len(sizes), len(patches), 3), dtype=np.int64)
            for i, (m, c) in enumerate(zip(seeded, patches)):
                sized = [None] * len(sizes) if m is None or not m.any() else \
                    _sized_masks(_closed(m, c.within, radius), sizes)
                for j, mask in enumerate(sized):
                    counts[j, i] = c.counts(mask)
            for j, size in enumerate(sizes):
                score = _balanced_score(counts[j])
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
