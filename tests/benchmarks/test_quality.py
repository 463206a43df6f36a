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
