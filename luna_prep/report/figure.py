"""What every image figure of the project shows: the HU window of its grey scale and a mm scale bar."""

from __future__ import annotations

from dataclasses import dataclass

NICE_MM = (1, 2, 5, 10, 20, 50, 100, 200)


@dataclass(frozen=True)
class ImageScale:
    """How to read an image of a store: grey values are ``hu_window`` mapped to [0, 1]; one pixel is ``spacing_mm``."""

    hu_window: tuple[float, float] | None  # None: the window is not known to the caller
    spacing_mm: float

    @classmethod
    def of_store(cls, store) -> ImageScale:
        """The scale of a :class:`~luna_prep.format.reader.PatchStore` or a store path."""
        from luna_prep.format.reader import PatchStore

        return cls.of_attrs((store if isinstance(store, PatchStore) else PatchStore(store)).attrs)

    @classmethod
    def of_attrs(cls, attrs) -> ImageScale:
        """The scale of a store's :class:`~luna_prep.format.spec.StoreAttributes`."""
        return cls(hu_window=tuple(attrs.hu_window), spacing_mm=float(attrs.spacing_mm))

    def window_text(self) -> str:
        if self.hu_window is None:
            return f"grey scale [0, 1] of the stored window; {self.spacing_mm:g} mm/pixel"
        lo, hi = self.hu_window
        return f"HU window {lo:g} to {hi:g} (black to white); {self.spacing_mm:g} mm/pixel"


def bar_length_mm(width_px: float, spacing_mm: float) -> float:
    """The largest round length (1, 2, 5, 10, ... mm) that fits in a quarter of an image ``width_px`` wide."""
    quarter = width_px * spacing_mm / 4
    fitting = [mm for mm in NICE_MM if mm <= quarter]
    return float(fitting[-1] if fitting else NICE_MM[0])


def add_scale_bar(ax, width_px: float, spacing_mm: float, color: str = "white"):
    """A mm scale bar in the lower right of an image axes (data units = pixels); returns the artist."""
    from matplotlib import font_manager
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    mm = bar_length_mm(width_px, spacing_mm)
    bar = AnchoredSizeBar(ax.transData, mm / spacing_mm, f"{mm:g} mm", "lower right", pad=0.2, color=color,
                          frameon=True, size_vertical=max(width_px / 80, 0.5),
                          fontproperties=font_manager.FontProperties(size=6))
    bar.patch.set(facecolor="black", alpha=0.45, edgecolor="none")  # readable over bone and air alike
    bar.set_gid("scale_bar")
    ax.add_artist(bar)
    return bar


def scale_bars(fig) -> list:
    """The scale bars of a figure (the artists :func:`add_scale_bar` added), for tests and checks."""
    return [a for ax in fig.axes for a in ax.artists if a.get_gid() == "scale_bar"]
