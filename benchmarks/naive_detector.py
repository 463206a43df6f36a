"""A naive nodule detector, to show how hard a synthetic data set is: CPM on easy vs luna scans.

Per scan: resample to 1 mm, take the lung mask of the build (luna_prep.pipeline.lungmask) eroded by
3 mm, threshold HU > -400 inside it, label connected components and rank each by a shape and size score: its
compactness (volume over that of the ball spanning its largest bounding-box edge: 1 for a ball,
small for a vessel) times a size prior (1 for 3..30 mm equivalent diameters). The components' centres
are the candidates; luna_train.evaluation.froc scores them as LUNA16 does (CPM).

    python benchmarks/naive_detector.py --scans 10 --seed 0 --difficulty easy luna [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from luna_prep.pipeline.lungmask import lung_mask
from luna_prep.pipeline.resampling import encode_hu, resample_isotropic
from luna_prep.synthetic.scans import synthesize
from luna_train.evaluation.froc import compute_froc

WINDOW = (-1000.0, 400.0)
THRESHOLD_HU = -400.0
MIN_VOXELS = 10  # 10 mm3 at 1 mm: a 2.7 mm ball
ERODE_MM = 3


def detect(path: Path, max_candidates: int = 100) -> pd.DataFrame:
    """Candidates (coordX, coordY, coordZ, probability) of one scan."""
    vol = resample_isotropic(sitk.ReadImage(str(path)), 1.0)
    hu = vol.array
    lungs = lung_mask(encode_hu(hu, WINDOW, "uint8"), vol.spacing, WINDOW, full_scale=255.0).upsample(hu.shape)
    lungs = ndimage.binary_erosion(lungs, iterations=ERODE_MM)  # the coarse mask's blocky edge reaches into the wall
    labels, n = ndimage.label((hu > THRESHOLD_HU) & lungs)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    rows = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or sizes[i] < MIN_VOXELS:
            continue
        extent = max(s.stop - s.start for s in sl) * vol.spacing
        volume = sizes[i] * vol.spacing ** 3
        compact = min(1.0, volume / (np.pi / 6 * extent ** 3))
        d_eq = (6 * volume / np.pi) ** (1 / 3)
        prior = 1.0 if 3.0 <= d_eq <= 30.0 else 0.1
        zyx = np.array(ndimage.center_of_mass(labels[sl] == i)) + [s.start for s in sl]
        rows.append((*vol.zyx_to_world(zyx), compact * prior))
    df = pd.DataFrame(rows, columns=["coordX", "coordY", "coordZ", "probability"])
    return df.nlargest(max_candidates, "probability")


def found_by_kind(root: Path, sub: pd.DataFrame) -> dict:
    """luna sets: per nodule kind, location and shape, "found/total" by any of the kept candidates."""
    nod = pd.read_csv(root / "nodules.csv")
    found = []
    for _, r in nod.iterrows():
        c = sub[sub.seriesuid == r.seriesuid][["coordX", "coordY", "coordZ"]].to_numpy()
        d = np.linalg.norm(c - [r.coordX, r.coordY, r.coordZ], axis=1) if len(c) else np.array([np.inf])
        found.append(bool(d.min() < r.diameter_mm / 2))
    nod["found"] = found
    return {col: {k: f"{int(g.found.sum())}/{len(g)}" for k, g in nod.groupby(col)}
            for col in ("kind", "location", "shape")}


def score(root: Path, uids: list[str], paths: list[Path]) -> dict:
    """CPM and sensitivities of the naive detector on a synthetic data set."""
    sub = pd.concat([detect(p).assign(seriesuid=u) for u, p in zip(uids, paths)], ignore_index=True)
    ann = pd.read_csv(root / "annotations.csv")
    res = compute_froc(sub, ann, None, uids, n_bootstrap=200)
    out = {"cpm": round(res.cpm, 3), "sensitivities": [round(float(v), 3) for v in res.sensitivities],
           "n_nodules": res.n_nodules, "n_hits": res.n_hits, "cpm_ci": [round(float(v), 3) for v in res.cpm_ci]}
    if (root / "nodules.csv").is_file():
        out["found"] = found_by_kind(root, sub)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--difficulty", nargs="+", default=["easy", "luna"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for level in args.difficulty:
            ds = synthesize(Path(tmp) / level, n_scans=args.scans, seed=args.seed, difficulty=level)
            out[level] = score(ds.root, [s.seriesuid for s in ds.scans], [s.path for s in ds.scans])
            print(level, json.dumps(out[level]))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
