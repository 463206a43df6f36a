"""luna-prep build --masks lidc on a scan with the geometry of a real LUNA16 scan and its real contours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from click.testing import CliRunner

from luna_prep.cli import main
from luna_prep.format.reader import PatchStore
from luna_prep.luna16.geometry import read_header_geometry

from paths import DATA

UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.905371958588660410240398317235"


def _scan_with_real_geometry(root: Path) -> None:
    """A uniform lung-like volume on the real scan's grid: the masks come from the contours alone."""
    geo = read_header_geometry(DATA / "headers" / f"{UID}.mhd")
    image = sitk.GetImageFromArray(np.full(geo.size[::-1], -850, np.int16))
    image.SetOrigin(geo.origin)
    image.SetSpacing(geo.spacing)
    image.SetDirection(geo.direction)
    (root / "subset0").mkdir(parents=True)
    sitk.WriteImage(image, str(root / "subset0" / f"{UID}.mhd"))
    ann = pd.read_csv(DATA / "annotations.csv")
    rows = ann[ann["seriesuid"] == UID].copy()
    # a second finding with no contours in the database: it must fall back to a sphere
    rows.loc[len(ann)] = [UID, 0.0, 0.0, -250.0, 8.0]
    rows.to_csv(root / "annotations.csv", index=False)


def test_lidc_masks_follow_the_readers_contours(tmp_path):
    root = tmp_path / "luna16"
    _scan_with_real_geometry(root)
    out = tmp_path / "lidc.zarr"
    res = CliRunner().invoke(main, ["build", "--data-root", str(root), "--subsets", "0", "--out", str(out),
                                    "--scales", "32,48", "--jitter-copies", "1", "--workers", "0", "--quiet",
                                    "--masks", "lidc", "--lidc-db", str(DATA / "lidc_two_scans.sqlite"), "--no-card"])
    assert res.exit_code == 0, res.output
    assert "nodule masks: 1 from LIDC readers' contours, 1 spheres (no contours found)" in res.output
    store = PatchStore(out)
    m = store.manifest
    ann = pd.read_csv(root / "annotations.csv")
    real = m[(m["kind"] == "nodule") & (m["annotation_index"] == 0)]
    fake = m[(m["kind"] == "nodule") & (m["annotation_index"] == 1)]
    assert set(real["mask_source"]) == {"lidc"} and set(fake["mask_source"]) == {"sphere"}
    assert set(m.loc[m["kind"] == "random", "mask_source"]) == {"none"}
    # the centred patch: consensus centroid within 1.5 mm of the annotation, size within 30%
    centre = real[real["scale"] == 48].iloc[0]
    _, mask = store.read_patch(48, int(centre["index"]))
    world = np.array([centre["center_x"], centre["center_y"], centre["center_z"]])
    centroid = world + (np.argwhere(mask).mean(axis=0) - 24)[::-1] * store.attrs.spacing_mm
    target = ann.loc[0, ["coordX", "coordY", "coordZ"]].to_numpy(float)
    assert np.linalg.norm(centroid - target) < 1.5
    diameter = (6 * mask.sum() / np.pi) ** (1 / 3)  # 1 mm voxels
    assert abs(diameter / ann.loc[0, "diameter_mm"] - 1) < 0.3
    assert int(centre["fg_voxels"]) == int(mask.sum())
    # not a sphere: the readers' outline differs from the ball of the same diameter
    sphere = np.sum(np.linalg.norm(np.indices((48,) * 3).reshape(3, -1).T - 24, axis=1)
                    <= ann.loc[0, "diameter_mm"] / 2)
    assert mask.sum() != sphere
