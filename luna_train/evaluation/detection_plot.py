"""A per-scan figure: the most probable candidates on their axial slices, with the true nodules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from luna_prep.format.reader import ScanVolume


def plot_scan_candidates(volume: ScanVolume, candidates: pd.DataFrame, out_png: str | Path,
                         annotations: pd.DataFrame | None = None, n: int = 6, half_mm: float = 40.0) -> Path:
    """Up to ``n`` panels, one per top candidate: a crop of its axial slice, the candidate in red
    (probability in the title) and every annotated nodule on that slice in green (its radius)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    top = candidates.sort_values("probability", ascending=False).head(n)
    truth = annotations[annotations["seriesuid"] == volume.seriesuid] if annotations is not None else None
    cols = max(1, min(3, len(top)))
    rows = max(1, int(np.ceil(len(top) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    sp = volume.spacing_mm
    for ax, cand in zip(axes.ravel(), top.itertuples()):
        z, y, x = np.rint(volume.world_to_zyx([cand.coordX, cand.coordY, cand.coordZ])).astype(int)
        z = int(np.clip(z, 0, volume.image.shape[0] - 1))
        h = int(half_mm / sp)
        y0, x0 = max(0, y - h), max(0, x - h)
        ax.imshow(volume.image[z, y0:y + h, x0:x + h], cmap="gray", vmin=0, vmax=1)
        ax.add_patch(Circle((x - x0, y - y0), 6 / sp, fill=False, color="red", lw=1.2))
        if truth is not None:
            for t in truth.itertuples():
                tz, ty, tx = volume.world_to_zyx([t.coordX, t.coordY, t.coordZ])
                r = t.diameter_mm / 2
                dz = abs(tz - z) * sp
                if dz < r:
                    ax.add_patch(Circle((tx - x0, ty - y0), np.sqrt(r * r - dz * dz) / sp, fill=False,
                                        color="lime", lw=1.0, ls="--"))
        ax.set_title(f"p={cand.probability:.2f}  z={cand.coordZ:.0f} mm", fontsize=8)
    fig.suptitle(f"{volume.seriesuid[-12:]}: top candidates (red), annotated nodules (green)", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
