"""A per-scan figure: the most probable candidates on their axial slices, true and false positives apart.

Each panel is a crop of a candidate's axial slice: the candidate circled green when it lies within
an annotated nodule's radius (a true positive, the LUNA16 rule), red when not, orange when the
scan's annotations are not given; the annotated nodules on that slice dashed cyan. The title gives
the candidate's rank by probability and its distance to the nearest annotated nodule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from luna_prep.format.reader import ScanVolume
from luna_prep.report.figure import ImageScale, add_scale_bar

TP_COLOR, FP_COLOR, UNKNOWN_COLOR, TRUTH_COLOR = "lime", "red", "orange", "cyan"
_XYZ = ["coordX", "coordY", "coordZ"]


def rank_candidates(candidates: pd.DataFrame, truth: pd.DataFrame | None, n: int) -> pd.DataFrame:
    """The ``n`` most probable candidates with ``rank`` (1 = most probable), ``distance_mm`` to the nearest
    annotated nodule (NaN without annotations or nodules) and ``hit`` (True, False; None without annotations)."""
    top = candidates.sort_values("probability", ascending=False, kind="stable").head(n).reset_index(drop=True)
    top.insert(0, "rank", np.arange(1, len(top) + 1))
    if truth is None or truth.empty:
        top["distance_mm"] = np.nan
        top["hit"] = None if truth is None else False
        return top
    d = np.linalg.norm(top[_XYZ].to_numpy(float)[:, None, :] - truth[_XYZ].to_numpy(float)[None], axis=2)
    top["distance_mm"] = d.min(axis=1)
    top["hit"] = (d <= truth["diameter_mm"].to_numpy(float)[None] / 2).any(axis=1)
    return top


def plot_scan_candidates(volume: ScanVolume, candidates: pd.DataFrame, out_png: str | Path,
                         annotations: pd.DataFrame | None = None, n: int = 6, half_mm: float = 40.0,
                         hu_window: tuple[float, float] | None = None) -> Path:
    """Write :func:`candidates_figure` to ``out_png``."""
    import matplotlib.pyplot as plt

    fig = candidates_figure(volume, candidates, annotations, n, half_mm, hu_window)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def candidates_figure(volume: ScanVolume, candidates: pd.DataFrame, annotations: pd.DataFrame | None = None,
                      n: int = 6, half_mm: float = 40.0, hu_window: tuple[float, float] | None = None):
    """Up to ``n`` panels, one per top candidate (see the module docstring); ``hu_window`` is the store's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = annotations[annotations["seriesuid"] == volume.seriesuid] if annotations is not None else None
    top = rank_candidates(candidates, truth, n)
    cols = max(1, min(3, len(top)))
    rows = max(1, int(np.ceil(len(top) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.5 * rows + 0.6), squeeze=False, layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, cand in zip(axes.ravel(), top.itertuples()):
        _draw_candidate(ax, volume, cand, truth, half_mm)
    scale = ImageScale(hu_window, volume.spacing_mm)
    key = "true positive (green), false positive (red)" if truth is not None else "candidates (orange)"
    fig.suptitle(f"{volume.seriesuid[-12:]}: top candidates, {key}, annotated nodules (dashed cyan)\n"
                 f"{scale.window_text()}", fontsize=9)
    return fig


def _draw_candidate(ax, volume: ScanVolume, cand, truth: pd.DataFrame | None, half_mm: float) -> None:
    from matplotlib.patches import Circle

    sp = volume.spacing_mm
    z, y, x = np.rint(volume.world_to_zyx([cand.coordX, cand.coordY, cand.coordZ])).astype(int)
    z = int(np.clip(z, 0, volume.image.shape[0] - 1))
    h = int(half_mm / sp)
    y0, x0 = max(0, y - h), max(0, x - h)
    crop = volume.image[z, y0:y + h, x0:x + h]
    ax.imshow(crop, cmap="gray", vmin=0, vmax=1)
    color = UNKNOWN_COLOR if cand.hit is None else TP_COLOR if cand.hit else FP_COLOR
    ax.add_patch(Circle((x - x0, y - y0), 6 / sp, fill=False, color=color, lw=1.4, gid="candidate"))
    for t in ([] if truth is None else truth.itertuples()):
        tz, ty, tx = volume.world_to_zyx([t.coordX, t.coordY, t.coordZ])
        r, dz = t.diameter_mm / 2, abs(tz - z) * sp
        if dz < r:
            ax.add_patch(Circle((tx - x0, ty - y0), np.sqrt(r * r - dz * dz) / sp, fill=False, color=TRUTH_COLOR,
                                lw=1.0, ls="--", gid="annotation"))
    add_scale_bar(ax, crop.shape[1], sp)
    ax.set_title(f"#{cand.rank} p={cand.probability:.2f}  z={cand.coordZ:.0f} mm\n{_verdict(cand)}", fontsize=8,
                 color="black")


def _verdict(cand) -> str:
    if cand.hit is None:
        return "no annotations given"
    if np.isnan(cand.distance_mm):
        return "FP: no nodule in this scan"
    return f"{'TP' if cand.hit else 'FP'}: {cand.distance_mm:.1f} mm to nearest nodule"
