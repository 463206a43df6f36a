"""Boundary metrics of benchmarks/quality.py: the signed surface distance measures over/under-segmentation."""

import importlib.util

import numpy as np
import pytest
from scipy import ndimage

from paths import REPO


def _quality():
    spec = importlib.util.spec_from_file_location("quality", REPO / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ball(radius, size=32):
    grid = np.indices((size,) * 3) - size // 2
    return np.sqrt((grid ** 2).sum(0)) <= radius


def test_signed_surface_distance_sign_and_size():
    q = _quality()
    truth = _ball(6)
    assert q.signed_surface_distance(truth, truth) == 0.0
    grown, shrunk = ndimage.binary_dilation(truth), ndimage.binary_erosion(truth)
    assert q.signed_surface_distance(grown, truth) == pytest.approx(1.0, abs=0.15)
    assert q.signed_surface_distance(shrunk, truth) == pytest.approx(-1.0, abs=0.15)
    assert q.signed_surface_distance(_ball(8), truth) == pytest.approx(2.0, abs=0.3)
    assert q.signed_surface_distance(np.zeros_like(truth), truth) is None


def test_surface_distance_mm_is_monai_and_scales_with_spacing():
    q = _quality()
    truth = _ball(6)
    grown = ndimage.binary_dilation(truth)
    one = q.surface_distance_mm(grown, truth, 1.0)
    assert one == pytest.approx(1.0, abs=0.15)  # unsigned: the same size as the signed bias here
    assert q.surface_distance_mm(grown, truth, 1.5) == pytest.approx(1.5 * one, rel=1e-6)
    assert q.surface_distance_mm(truth, truth, 1.0) == 0.0
    shifted = np.roll(truth, 2, axis=0)  # no bias, but a distance
    assert abs(q.signed_surface_distance(shifted, truth)) < 0.1 and q.surface_distance_mm(shifted, truth, 1.0) > 0.5


def _blurred_ball(radius, size=32):
    """A probability map whose 0.5 contour is the ball of ``radius``: p falls from 1 to 0 over 4 voxels."""
    grid = np.indices((size,) * 3) - size // 2
    return np.clip(0.5 - (np.sqrt((grid ** 2).sum(0)) - radius) / 4, 0, 1).astype(np.float32)


def test_threshold_sweep_bias_changes_sign_across_the_true_contour():
    q = _quality()
    truth, empty = _ball(6), np.zeros((32, 32, 32), bool)
    prob = _blurred_ball(6)
    rows = q.threshold_sweep([(prob, truth), (np.zeros_like(prob), empty)], thresholds=(0.2, 0.5, 0.8))
    low, mid, high = rows
    assert low["signed_sd"] > 0.8 and high["signed_sd"] < -0.8  # grown by ~1.2 voxel, shrunk by ~1.2
    assert abs(mid["signed_sd"]) < 0.3 and mid["dice"] > 0.95
    assert low["recall"] == 1.0 and low["precision"] < 0.8 and high["precision"] == 1.0 and high["recall"] < 0.8
    assert all(r["dice"] == pytest.approx(r["pooled_dice"], abs=0.05) for r in rows)  # one nodule patch, one empty


def test_calibrated_threshold_takes_the_best_dice_within_the_bias_and_else_the_smallest_bias():
    q = _quality()
    rows = [{"threshold": 0.5, "dice": 0.80, "signed_sd": 1.2}, {"threshold": 0.7, "dice": 0.78, "signed_sd": 0.25},
            {"threshold": 0.8, "dice": 0.76, "signed_sd": -0.1}, {"threshold": 0.9, "dice": None, "signed_sd": None}]
    assert q.calibrated_threshold(rows) == 0.7  # 0.5 has the higher Dice but a biased boundary
    biased = [{"threshold": 0.5, "dice": 0.6, "signed_sd": 2.0}, {"threshold": 0.9, "dice": 0.4, "signed_sd": -0.9}]
    assert q.calibrated_threshold(biased) == 0.9
    with pytest.raises(ValueError, match="no threshold"):
        q.calibrated_threshold([{"threshold": 0.5, "dice": None, "signed_sd": None}])


def test_one_pass_gives_evaluate_runs_figures_and_the_sweep(tiny_run):
    """patch_quality takes every figure from one inference pass: the raw figures equal evaluate_run's, the sweep
    equals threshold_sweep over the predictions, and the nodule-patch precision / recall / signed distance
    equal the sweep's row at the run's threshold (both pool the patches holding a nodule)."""
    from luna_train.evaluation.patch_eval import eval_dataset, evaluate_run, iter_predictions
    from luna_train.inference.trained_model import load_trained_model

    q = _quality()
    run_dir, store = tiny_run
    model = load_trained_model(run_dir)
    res, rows = q.patch_quality(model, [9], 1.0, sweep=True, store=store)
    ref = evaluate_run(run_dir, dataset=store, subsets=[9])
    assert res["n_foreground"] > 0
    for key in ("n_patches", "n_foreground", "dice", "pooled_dice", "precision", "recall"):
        assert res[key] == ref[key], key
    cfg = model.config
    pairs = iter_predictions(model, eval_dataset(cfg, [9], store), batch_size=4)
    assert rows == q.threshold_sweep(pairs)
    at_run = next(r for r in rows if r["threshold"] == cfg.train.threshold)
    nodule = res["nodule_patches"]
    assert nodule["n_patches"] == res["n_foreground"]
    assert (nodule["precision"], nodule["recall"]) == (at_run["precision"], at_run["recall"])
    assert nodule["mean_signed_surface_distance_voxels"] == at_run["signed_sd"]
    assert q.patch_quality(model, [9], 1.0, store=store)[1] is None
