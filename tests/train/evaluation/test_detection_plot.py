"""Detection figures: true and false positives apart, rank and distance to the nearest nodule, window and scale."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from luna_prep.format.reader import ScanVolume
from luna_prep.report.figure import scale_bars
from luna_train.evaluation.detection_plot import (
    FP_COLOR,
    TP_COLOR,
    candidates_figure,
    plot_scan_candidates,
    rank_candidates,
)

COLS = ["seriesuid", "coordX", "coordY", "coordZ"]


def _volume() -> ScanVolume:
    image = np.random.default_rng(0).random((40, 100, 100), dtype=np.float32)
    return ScanVolume("1.2.3.scan", image, image > 2, (-50.0, -50.0, -20.0), 1.0, {})


def _frames():
    truth = pd.DataFrame([("1.2.3.scan", 0.0, 0.0, 0.0, 10.0), ("other", 0.0, 0.0, 0.0, 30.0)],
                         columns=COLS + ["diameter_mm"])
    cands = pd.DataFrame([("1.2.3.scan", 3.0, 4.0, 0.0, 0.6),  # 5 mm from the nodule, inside its 5 mm radius: TP
                          ("1.2.3.scan", 30.0, 0.0, 0.0, 0.9),  # 30 mm away: FP, the most probable
                          ("1.2.3.scan", 0.0, 6.0, 0.0, 0.1)],  # 6 mm: FP, not in the top 2
                         columns=COLS + ["probability"])
    return truth, cands


def test_rank_and_distance_follow_the_luna16_hit_rule():
    truth, cands = _frames()
    top = rank_candidates(cands, truth[truth["seriesuid"] == "1.2.3.scan"], n=3)
    assert top["rank"].tolist() == [1, 2, 3] and top["probability"].tolist() == [0.9, 0.6, 0.1]
    np.testing.assert_allclose(top["distance_mm"], [30.0, 5.0, 6.0])
    assert top["hit"].tolist() == [False, True, False]
    assert rank_candidates(cands, None, n=2)["hit"].tolist() == [None, None]


def test_true_and_false_positives_are_drawn_apart():
    truth, cands = _frames()
    fig = candidates_figure(_volume(), cands, truth, n=2, half_mm=20.0, hu_window=(-1000.0, 400.0))
    try:
        axes = [ax for ax in fig.axes if ax.images]
        assert [ax.get_title() for ax in axes] == [
            "#1 p=0.90  z=0 mm\nFP: 30.0 mm to nearest nodule", "#2 p=0.60  z=0 mm\nTP: 5.0 mm to nearest nodule"]
        colors = [[p.get_edgecolor() for p in ax.patches if p.get_gid() == "candidate"][0] for ax in axes]
        assert colors[0] != colors[1]
        assert colors[0] == pytest.approx(plt.matplotlib.colors.to_rgba(FP_COLOR))
        assert colors[1] == pytest.approx(plt.matplotlib.colors.to_rgba(TP_COLOR))
        assert all(any(p.get_gid() == "annotation" for p in ax.patches) for ax in axes)  # nodule on slice z=0
        assert "HU window -1000 to 400" in fig.get_suptitle()
        assert len(scale_bars(fig)) == 2
    finally:
        plt.close(fig)


def test_plot_scan_candidates_writes_png(tmp_path):
    truth, cands = _frames()
    out = plot_scan_candidates(_volume(), cands, tmp_path / "d" / "scan.png", annotations=truth, half_mm=20.0)
    assert out.stat().st_size > 0
