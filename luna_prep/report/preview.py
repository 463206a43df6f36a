"""A montage of a store's patches with their masks outlined, to look at."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from luna_prep.format.reader import PatchStore
from luna_prep.report.figure import ImageScale, add_scale_bar


def pick_samples(store: PatchStore, n: int, seed: int = 0) -> list[int]:
    """Sample ids to show: nodules first (largest diameter spread), then candidates and randoms."""
    m = store.manifest.drop_duplicates("sample_id")
    rng = np.random.default_rng(seed)
    picks = []
    for kind, share in (("nodule", 0.5), ("candidate", 0.25), ("random", 0.25)):
        ids = m.loc[m["kind"] == kind, "sample_id"].to_numpy()
        k = min(len(ids), max(1, int(round(n * share))))
        picks += sorted(rng.choice(ids, size=k, replace=False).tolist()) if len(ids) else []
    return picks[:n]


def render_preview(store_path: str | Path, out_png: str | Path, n: int = 8, seed: int = 0) -> Path:
    """One row per sample, one column per scale: an axial slice, mask outlined in red (see :func:`preview_figure`)."""
    import matplotlib.pyplot as plt

    fig = preview_figure(PatchStore(store_path), n, seed)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def preview_figure(store: PatchStore, n: int = 8, seed: int = 0):
    """The preview montage as a matplotlib figure (constrained layout, HU window stated, mm scale bars).

    The slice is the central one (z = s//2) unless the mask misses it, then the slice where the
    mask is largest (its z is in the title).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = store.attrs.scales
    scale = ImageScale.of_store(store)
    samples = pick_samples(store, n, seed)
    m = store.manifest.set_index(["sample_id", "scale"])
    fig, axes = plt.subplots(len(samples), len(scales), figsize=(2.4 * len(scales), 2.5 * len(samples) + 0.5),
                             squeeze=False, layout="constrained")
    for r, sid in enumerate(samples):
        for c, s in enumerate(scales):
            _draw_patch(axes[r, c], store, m.loc[(sid, s)], s, scale, first_column=c == 0)
    fig.suptitle(f"{Path(store.root).name}: axial slices (z = s//2 unless titled), masks in red\n"
                 f"{scale.window_text()}", fontsize=9)
    return fig


def _draw_patch(ax, store: PatchStore, row, s: int, scale: ImageScale, first_column: bool) -> None:
    image, mask = store.read_patch(s, int(row["index"]))
    z = s // 2
    if not mask[z].any() and mask.any():  # a jittered copy: show the slice through the nodule
        z = int(np.argmax(mask.reshape(s, -1).sum(axis=1)))
    ax.imshow(image[z], cmap="gray", vmin=0, vmax=1)
    if mask[z].any():
        ax.contour(mask[z], levels=[0.5], colors="red", linewidths=0.8)
    add_scale_bar(ax, s, scale.spacing_mm)
    title = f"{row['kind']} {s}^3" + (f" z={z}" if z != s // 2 else "")
    if row["kind"] == "nodule":
        title += f"\nd={row['diameter_mm']:.1f}mm"
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    if first_column:
        ax.set_ylabel(f"{row['seriesuid'][-8:]}\nfg={int(row['fg_voxels'])}", fontsize=6)
