"""Post-processing of probability maps: each step on tiny arrays, and validation tuning."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from luna_train.evaluation.metrics import mean_dice
from luna_train.inference.postprocess import PostprocessConfig, ball, postprocess, tune_postprocess


def test_threshold_is_inclusive_and_within_zeroes_outside():
    prob = np.array([[[0.2, 0.5, 0.9, 0.7]]])
    np.testing.assert_array_equal(postprocess(prob), [[[False, True, True, True]]])
    within = np.array([[[True, True, False, True]]])
    out = postprocess(prob, PostprocessConfig(), within=within)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, [[[False, True, False, True]]])


def test_components_below_min_size_removed():
    prob = np.zeros((5, 8, 8))
    prob[1, 1, 1:4] = 0.9  # 3 voxels
    prob[3, 4:6, 4:7] = 0.9  # 6 voxels
    prob[2, 6, 0] = prob[1, 7, 1] = 0.9  # 2 voxels touching diagonally: one 26-connected region
    out = postprocess(prob, PostprocessConfig(min_size=4))
    assert out.sum() == 6 and out[3, 4:6, 4:7].all()
    assert postprocess(prob, PostprocessConfig(min_size=2)).sum() == 11  # nothing below 2
    assert postprocess(prob, PostprocessConfig(min_size=3)).sum() == 9  # the diagonal pair goes


def test_ball():
    assert ball(1).sum() == 7  # centre + 6 face neighbours
    assert ball(2).sum() == 33
    assert ball(1, ndim=2).sum() == 5


def test_closing_fills_a_one_voxel_gap_even_at_the_border():
    # a 5x5x5 block filling the whole array, with a 1-voxel hole at its centre
    prob = np.full((5, 5, 5), 0.9)
    prob[2, 2, 2] = 0.1
    assert postprocess(prob).sum() == 124
    # closing fills the hole; the block touches every border and is not eroded there
    assert postprocess(prob, PostprocessConfig(closing_radius=1)).all()


def test_closing_bridges_a_one_voxel_crack():
    # a 5x5x9 rod cut by a 1-voxel crack at x=4: two components of 5*5*4 voxels.
    prob = np.full((5, 5, 9), 0.9)
    prob[:, :, 4] = 0.1
    out = postprocess(prob, PostprocessConfig(closing_radius=1))
    # the crack's 3x3 interior is filled (its rim is not: the ball cannot reach around it),
    # so the halves are joined and nothing grows outside the rod
    assert out[1:4, 1:4, 4].all() and out.sum() == 200 + 9
    assert ndimage.label(out)[1] == 1


def test_closing_respects_within():
    prob = np.full((5, 5, 5), 0.9)
    prob[2, 2, 2] = 0.1
    within = np.ones_like(prob, dtype=bool)
    within[2, 2, 2] = False
    out = postprocess(prob, PostprocessConfig(closing_radius=1), within=within)
    assert out.sum() == 124 and not out[2, 2, 2]


def test_hysteresis_keeps_only_seeded_regions():
    prob = np.zeros((1, 4, 9))
    prob[0, 1:3, 0:3] = 0.6  # region above 0.5 without a voxel above 0.9
    prob[0, 1:3, 5:8] = 0.6
    prob[0, 2, 7] = 0.95  # seed of the second region
    out = postprocess(prob, PostprocessConfig(threshold=0.5, hysteresis_high=0.9))
    assert out.sum() == 6 and out[0, 1:3, 5:8].all() and not out[0, :, :4].any()
    # a seed outside `within` does not count
    within = np.ones_like(prob, dtype=bool)
    within[0, 2, 7] = False
    assert not postprocess(prob, PostprocessConfig(hysteresis_high=0.9), within=within).any()


def make_validation_case(n: int = 4):
    """Nodule voxels at p=0.42 (an under-confident model), background 0.1 with speckles at 0.45."""
    rng = np.random.default_rng(0)
    probs, targets = [], []
    for _ in range(n):
        target = np.zeros((8, 8, 8), dtype=bool)
        target[2:5, 2:6, 3:6] = True
        prob = np.where(target, 0.42, 0.1)
        prob[rng.integers(0, 8), 7, rng.integers(0, 8)] = 0.45  # isolated 1-voxel speckle
        probs.append(prob)
        targets.append(target)
    return probs, targets


def test_tuning_beats_the_default_threshold():
    probs, targets = make_validation_case()
    # at 0.5 nothing is predicted: Dice 0 on every patch
    assert mean_dice([postprocess(p) for p in probs], targets) == 0.0
    cfg, score = tune_postprocess(probs, targets, grid={"threshold": [0.3, 0.5, 0.7]})
    # 0.3 keeps the nodules (36 voxels) and the speckle: Dice 2*36/(37+36) per patch
    assert cfg == PostprocessConfig(threshold=0.3) and score == pytest.approx(72 / 73)
    cfg, score = tune_postprocess(probs, targets)  # default grid: a size filter drops the speckle
    assert cfg.threshold < 0.5 and cfg.min_size >= 2 and score == 1.0
    assert mean_dice([postprocess(p, cfg) for p in probs], targets) == score


def test_tuning_rejects_unknown_keys():
    probs, targets = make_validation_case(1)
    with pytest.raises(ValueError):
        tune_postprocess(probs, targets, grid={"thresh": [0.5]})


def test_tuning_keeps_small_nodules_that_empty_patches_would_vote_away():
    """Nine empty patches with a faint speckle and one small nodule: deleting everything would
    score 0.9 mean per-patch Dice over all patches, but the balanced score keeps the nodule."""
    probs, targets = [], []
    for i in range(10):
        target = np.zeros((8, 8, 8), dtype=bool)
        prob = np.full((8, 8, 8), 0.05)
        prob[0, 0, 0] = 0.55  # a one-voxel false positive on every patch
        if i == 0:
            target[3:5, 3:5, 3:5] = True  # an 8-voxel nodule
            prob[target] = 0.9
        probs.append(prob)
        targets.append(target)
    cfg, _ = tune_postprocess(probs, targets, grid={"threshold": [0.5, 0.95], "min_size": [0, 2, 30]})
    assert cfg.threshold == 0.5 and cfg.min_size == 2
    kept = postprocess(probs[0], cfg)
    assert (kept == targets[0]).all()


def test_grid_with_threshold_adds_the_runs_calibrated_threshold_and_lets_it_win():
    from luna_train.inference.postprocess import DEFAULT_GRID, grid_with_threshold, tune_postprocess

    grid = grid_with_threshold(0.85)
    assert grid["threshold"] == sorted({*DEFAULT_GRID["threshold"], 0.85})
    assert grid_with_threshold(0.5)["threshold"] == sorted(DEFAULT_GRID["threshold"])  # already there: once
    assert DEFAULT_GRID["threshold"] == [0.3, 0.4, 0.5, 0.6, 0.7]  # not modified in place
    # a model whose nodule voxels sit at 0.9 and whose rim sits at 0.8: only a threshold above 0.8 is exact
    target = np.zeros((12, 12, 12), bool)
    target[4:8, 4:8, 4:8] = True
    prob = np.where(target, 0.9, 0.0)
    prob[3:9, 3:9, 3:9] = np.maximum(prob[3:9, 3:9, 3:9], 0.8)
    cfg, score = tune_postprocess([prob], [target], grid)
    assert cfg.threshold == 0.85 and score == 1.0
    cfg, score = tune_postprocess([prob], [target])
    assert cfg.threshold <= 0.7 and score < 1.0


def _whole_patch_score(probs, targets, within, cfg):
    """The tuning score computed the plain way: post-process whole patches, then Dice."""
    from luna_train.evaluation.metrics import dice, pooled_dice

    preds = [postprocess(p, cfg, w) for p, w in zip(probs, within)]
    fg = [dice(p, t) for p, t in zip(preds, targets) if t.any()]
    return 0.5 * ((np.mean(fg) if fg else 1.0) + pooled_dice(preds, targets))


def test_tuning_on_cut_patches_scores_every_config_as_whole_patches_do():
    """The tuning cuts patches to the lowest threshold's box and labels once for all sizes: every
    config's score must equal post-processing the whole patches (blobs touch the patch borders,
    some patches predict nothing, ``within`` masks part of each)."""
    from itertools import product

    from scipy import ndimage

    rng = np.random.default_rng(3)
    probs, targets, within = [], [], []
    for i in range(12):
        noise = ndimage.gaussian_filter(rng.random((20, 20, 20)), 1.5)
        prob = (noise - noise.min()) / (noise.max() - noise.min())
        if i % 4 == 0:
            prob *= 0.25  # predicts nothing at any threshold of the grid
        target = ndimage.gaussian_filter(rng.random((20, 20, 20)), 2.0) > 0.52
        target[0, :4, :4] = i % 3 == 0  # nodule voxels at the border
        w = np.ones_like(target)
        w[:, :, 17:] = i % 2 == 0
        probs.append(prob)
        targets.append(target)
        within.append(w)
    grid = {"threshold": [0.4, 0.55, 0.7], "min_size": [0, 3, 25], "closing_radius": [0, 1, 2],
            "hysteresis_high": [None, 0.75]}
    scores = {}
    for thr, size, radius, high in product(*grid.values()):
        cfg = PostprocessConfig(threshold=thr, min_size=size, closing_radius=radius, hysteresis_high=high)
        one = {"threshold": [thr], "min_size": [size], "closing_radius": [radius], "hysteresis_high": [high]}
        got_cfg, got = tune_postprocess(probs, targets, one, within)
        assert got_cfg == cfg
        scores[cfg] = _whole_patch_score(probs, targets, within, cfg)
        assert got == pytest.approx(scores[cfg], abs=1e-12), cfg
    assert len(set(round(s, 9) for s in scores.values())) > 10  # the grid's configs do differ
    best_cfg, best = tune_postprocess(probs, targets, grid, within)
    assert best == pytest.approx(max(scores.values())) and scores[best_cfg] == pytest.approx(best)
