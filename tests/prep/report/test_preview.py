"""preview.png: constrained layout, the HU window stated, a mm scale bar on every image."""

import matplotlib.pyplot as plt

from luna_prep.format.reader import PatchStore
from luna_prep.report.figure import ImageScale, bar_length_mm, scale_bars
from luna_prep.report.preview import preview_figure, render_preview


def test_bar_length_is_a_round_quarter_of_the_width():
    assert bar_length_mm(32, 1.0) == 5.0  # 32 mm wide: 8 mm quarter -> 5 mm
    assert bar_length_mm(64, 1.0) == 10.0
    assert bar_length_mm(200, 0.7) == 20.0  # 140 mm wide -> 35 mm quarter -> 20 mm
    assert bar_length_mm(2, 1.0) == 1.0  # never shorter than 1 mm


def test_preview_states_window_and_has_a_scale_bar_per_image(tiny_store):
    store = PatchStore(tiny_store)
    fig = preview_figure(store, n=4)
    try:
        lo, hi = store.attrs.hu_window
        assert f"HU window {lo:g} to {hi:g}" in fig.get_suptitle()
        images = [ax for ax in fig.axes if ax.images]
        bars = scale_bars(fig)
        assert len(bars) == len(images) > 0
        assert fig.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine"
        spacing = store.attrs.spacing_mm
        for ax, bar in zip(images, bars):  # the bar is as many pixels long as its label says in mm
            width = ax.images[0].get_array().shape[1]
            mm = bar_length_mm(width, spacing)
            assert bar.txt_label.get_text() == f"{mm:g} mm"
            assert abs(bar.size_bar.get_children()[0].get_width() - mm / spacing) < 1e-9
    finally:
        plt.close(fig)


def test_render_preview_writes_the_png(tiny_store, tmp_path):
    out = render_preview(tiny_store, tmp_path / "p.png", n=2)
    assert out.stat().st_size > 0
    assert ImageScale.of_store(tiny_store).hu_window == tuple(PatchStore(tiny_store).attrs.hu_window)
