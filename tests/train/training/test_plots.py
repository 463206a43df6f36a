"""curves.png and val_panel.png: the learning rate, the HU window and mm scale bars, no overlapping layout."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from luna_prep.report.figure import ImageScale, scale_bars
from luna_train.training.plots import curves_figure, panel_figure

HISTORY = [{"epoch": e, "step": 4 * e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_dice": 0.2 * e,
            "val_pooled_dice": 0.1 * e, "lr": 1e-3 / e, "seconds": 1.0} for e in (1, 2, 3)]


def test_curves_show_the_learning_rate():
    fig = curves_figure(HISTORY, best_epoch=2)
    try:
        (lr_ax,) = [ax for ax in fig.axes if ax.get_ylabel() == "learning rate"]
        (line,) = lr_ax.lines
        np.testing.assert_allclose(line.get_xdata(), [1, 2, 3])
        np.testing.assert_allclose(line.get_ydata(), [1e-3, 5e-4, 1e-3 / 3])
        assert lr_ax.get_yscale() == "log"
        assert fig.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine"
    finally:
        plt.close(fig)


def test_panel_states_window_and_has_a_bar_per_patch():
    rng = np.random.default_rng(0)
    items = [{"image": rng.random((16, 16)), "label": np.eye(16, dtype=bool), "pred": np.eye(16, dtype=bool),
              "dice": 1.0, "position": p, "slice": 3} for p in range(5)]
    fig = panel_figure(items, "validation", ImageScale((-1000.0, 400.0), 0.7))
    try:
        assert fig.get_suptitle() == "validation\nHU window -1000 to 400 (black to white); 0.7 mm/pixel"
        bars = scale_bars(fig)
        assert len(bars) == 5
        assert bars[0].txt_label.get_text() == "2 mm"  # 16 px * 0.7 mm = 11.2 mm wide -> 2 mm fits a quarter
        assert fig.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine"
    finally:
        plt.close(fig)
