"""Preview pictures of the synthetic scans for docs/synthetic.md (PNG into docs/img/).

    python benchmarks/synthetic_previews.py [--out docs/img] [--scans 24] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from luna_prep.pipeline.lungmask import lung_mask
from luna_prep.pipeline.resampling import encode_hu, resample_isotropic
from luna_prep.synthetic.phantom import sample_chest, sample_geometry
from luna_prep.synthetic.scans import synthesize

WINDOW = (-1000.0, 400.0)
GRAY = {"cmap": "gray", "vmin": -1000, "vmax": 400}
FINDINGS = [("kind", "solid"), ("kind", "part-solid"), ("kind", "ground-glass"), ("kind", "calcified"),
            ("location", "juxta-pleural"), ("location", "juxta-vascular"), ("shape", "lobulated"),
            ("shape", "spiculated"), ("shape", "lidc")]


def _iso(path: Path):
    return resample_isotropic(sitk.ReadImage(str(path)), 1.0)


def findings_mosaic(ds, out: Path) -> None:
    """A 40 mm axial crop (5 mm slab maximum) around one nodule of each kind, location and shape,
    the mask of its central slice outlined."""
    nod = pd.read_csv(ds.root / "nodules.csv")
    by_uid = {s.seriesuid: s for s in ds.scans}
    fig, axes = plt.subplots(3, 3, figsize=(6.6, 6.9))
    used: set[int] = set()
    for ax, (col, value) in zip(axes.ravel(), FINDINGS):
        ax.axis("off")
        big = 8 if col == "shape" and value != "lidc" else 5  # shapes show from 8 mm; real shapes are rarer
        rows = nod[(nod[col] == value) & (nod.diameter_mm >= big) & ~nod.index.isin(used)]
        if rows.empty:
            continue
        r = rows.iloc[0]
        used.add(r.name)
        s = by_uid[r.seriesuid]
        vol, lab = _iso(s.path), resample_isotropic(sitk.ReadImage(str(s.mask_path)), 1.0, fill_hu=0)
        z, y, x = np.rint(vol.world_to_zyx([r.coordX, r.coordY, r.coordZ])).astype(int)
        sl = (slice(z - 2, z + 3), slice(max(y - 20, 0), y + 20), slice(max(x - 20, 0), x + 20))
        ax.imshow(vol.array[sl].max(axis=0), **GRAY)  # 5 mm slab maximum: spicules show
        j = list(nod[nod.seriesuid == r.seriesuid].index).index(r.name) + 1
        ax.contour(np.abs(lab.array[(z, *sl[1:])] - j) < 0.5, [0.5], colors="r", linewidths=0.6)
        ax.set_title(f"{value if value != 'lidc' else 'LIDC shape'}\n{r.kind}, {r.location}, {r.diameter_mm:.1f} mm",
                     fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def _chest(seed: int, i: int, scan):
    """Scan i's chest as ``scans._luna_scan`` draws it (small scans), checked against its geometry."""
    rng = np.random.default_rng([seed, i, 0, 2])
    geom = sample_geometry(rng, False, scan.geometry.direction)
    if geom != scan.geometry:
        raise RuntimeError("the chest's random stream no longer matches scans._luna_scan")
    return sample_chest(rng, geom, False)


def confounders_mosaic(ds, seed: int, out: Path) -> None:
    """A 40 mm crop (5 mm slab maximum) around one confounder of each kind (not nodules, not annotated)."""
    wanted = {"hilar node": None, "intrapulmonary node": None, "atelectasis": None, "bud": None}
    for i, s in enumerate(ds.scans):
        for b in _chest(seed, i, s).blobs:
            if wanted.get(b.kind, 0) is None and (b.kind == "bud" or min(b.semi) > 1.0 or b.kind == "atelectasis"):
                wanted[b.kind] = (s, b)
    fig, axes = plt.subplots(1, 4, figsize=(8.4, 2.5))
    titles = {"hilar node": "hilar lymph node", "intrapulmonary node": "intrapulmonary lymph node",
              "atelectasis": "plate-like atelectasis", "bud": "mucus-filled airways,\ntree-in-bud"}
    for ax, (kind, found) in zip(axes, wanted.items()):
        ax.axis("off")
        if found is None:
            continue
        s, b = found
        vol = _iso(s.path)
        z, y, x = np.rint(vol.world_to_zyx(b.center)).astype(int)
        sl = (slice(z - 2, z + 3), slice(max(y - 20, 0), y + 20), slice(max(x - 20, 0), x + 20))
        ax.imshow(vol.array[sl].max(axis=0), **GRAY)
        ax.set_title(f"{titles[kind]}, {2 * max(b.semi):.1f} mm", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def easy_vs_luna(easy, luna, out: Path) -> None:
    """A mid-lung axial slice and a coronal slice of an easy and a luna scan."""
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
    for k, (name, ds) in enumerate((("easy", easy), ("luna", luna))):
        vol = _iso(ds.scans[0].path).array
        axes[2 * k].imshow(vol[int(vol.shape[0] * 0.6)], **GRAY)
        axes[2 * k + 1].imshow(vol[::-1, vol.shape[1] // 2 + 8], **GRAY)
        axes[2 * k].set_title(f"{name}: axial", fontsize=8)
        axes[2 * k + 1].set_title(f"{name}: coronal", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def vessel_mip(path: Path, out: Path) -> None:
    """Maximum intensity projection (coronal) of a full-size luna scan's lungs: the vessel trees."""
    vol = _iso(path)
    enc = encode_hu(vol.array, WINDOW, "uint8")
    lungs = ndimage.binary_erosion(lung_mask(enc, 1.0, WINDOW, full_scale=255.0).upsample(enc.shape), iterations=4)
    mip = np.where(lungs, vol.array, -1000).max(axis=1)[::-1]
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(mip, cmap="gray", vmin=-900, vmax=100)
    ax.set_title("luna: coronal MIP inside the lung mask", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def lung_mask_vs_gas(ds, real_ct: Path, out: Path) -> None:
    """The lung mask outlined where body gas is: a luna scan (coronal) and the real CT (axial)."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
    for ax, (title, vol, axis) in zip(axes, (("luna phantom, coronal", _iso(ds.scans[0].path), 1),
                                            ("real abdominal CT, axial", _iso(real_ct), 0))):
        hu = vol.array
        m = lung_mask(encode_hu(hu, WINDOW, "uint8"), vol.spacing, WINDOW, full_scale=255.0).upsample(hu.shape)
        labels, _ = ndimage.label(hu < -950)
        border = np.unique(np.concatenate([labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()]))
        inside = (labels > 0) & ~np.isin(labels, border) & ~m  # gas inside the body
        other = tuple(a for a in range(3) if a != axis)
        k = int(np.argmax(np.minimum(inside.sum(axis=other), m.sum(axis=other))))  # the plane with most of both
        img, mask = np.take(hu, k, axis=axis), np.take(m, k, axis=axis)
        if axis == 1:
            img, mask = img[::-1], mask[::-1]
        ax.imshow(img, **GRAY)
        ax.contour(mask, [0.5], colors="lime", linewidths=0.8)
        ax.set_title(f"{title}: lung mask (green)", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img")
    ap.add_argument("--scans", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-ct", default="tests/data/example_ct.nii.gz")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        luna = synthesize(Path(tmp) / "luna", n_scans=args.scans, seed=args.seed, difficulty="luna")
        easy = synthesize(Path(tmp) / "easy", n_scans=1, seed=args.seed)
        findings_mosaic(luna, out / "synth_findings.png")
        confounders_mosaic(luna, args.seed, out / "synth_confounders.png")
        easy_vs_luna(easy, luna, out / "synth_easy_vs_luna.png")
        full = synthesize(Path(tmp) / "full", n_scans=1, seed=args.seed, full_size=True, difficulty="luna")
        vessel_mip(full.scans[0].path, out / "synth_vessels_mip.png")
        lung_mask_vs_gas(luna, Path(args.real_ct), out / "synth_lungmask_gas.png")


if __name__ == "__main__":
    main()
