"""Masks given as volumes on each scan's grid: rendered nodule labels (--masks labels) and lung segmentations."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from luna_prep.build import BuildConfig, run_build
from luna_prep.format.reader import PatchStore
from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.pipeline.sampling import SamplingConfig
from luna_prep.synthetic.scans import synthesize


@pytest.fixture(scope="module")
def luna2(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth") / "luna16", n_scans=2, seed=4, difficulty="luna")


def _config(data, out, **kw) -> BuildConfig:
    return BuildConfig(data_root=str(data.root), out=str(out), subsets=(0, 1),
                       sampling=SamplingConfig(scales=(32, 48), jitter_copies=0), **kw)


def test_label_masks_are_the_rendered_shapes(luna2, tmp_path):
    report = run_build(_config(luna2, tmp_path / "p.zarr", masks="labels"), workers=0, progress=False)
    assert report.ok, report.failures
    store = PatchStore(tmp_path / "p.zarr")
    m = store.manifest
    centred = m[(m["kind"] == "nodule") & (m["scale"] == 48)]
    assert len(centred) == sum(len(s.nodules) for s in luna2.scans)
    assert set(centred["mask_source"]) <= {"label", "mixed"}
    for scan in luna2.scans:
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(luna2.root / "masks" / f"subset{scan.subset}"
                                                           / f"{scan.seriesuid}.mhd")))
        voxel_ml = float(np.prod(scan.geometry.spacing))
        rows = centred[centred["seriesuid"] == scan.seriesuid].sort_values("annotation_index")
        for j, row in enumerate(rows.itertuples()):
            rendered_mm3 = (labels == j + 1).sum() * voxel_ml
            _, mask = store.read_patch(48, row.index)
            if rendered_mm3 < 8 or row.mask_source != "label":
                continue  # a sub-voxel nodule, or one drawn as a sphere
            parts, n = ndimage.label(mask)  # other nodules of the scan may reach into the patch: take the centred one
            centres = ndimage.center_of_mass(mask, parts, range(1, n + 1))
            k = int(np.argmin([np.linalg.norm(np.subtract(c, 24)) for c in centres]))
            own = parts == k + 1
            assert own.sum() == pytest.approx(rendered_mm3, rel=0.35)  # 1 mm isotropic voxels
            centroid = np.argwhere(own).mean(axis=0) - 24  # offset from the patch centre, voxels = mm
            world = np.array([row.center_x, row.center_y, row.center_z]) + centroid[::-1]
            zyx = np.argwhere(labels == j + 1).mean(axis=0)
            expected = ScanGeometry.from_image(sitk.ReadImage(str(scan.path))).voxel_to_world(zyx[::-1])
            assert np.linalg.norm(world - expected) < 1.5


def test_lung_masks_from_a_folder_steer_the_random_negatives(luna2, tmp_path):
    folder = tmp_path / "seg-lungs-LUNA16"
    folder.mkdir()
    boxes = {}
    for scan in luna2.scans:
        image = sitk.ReadImage(str(scan.path))
        seg = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
        nz, ny, nx = seg.shape
        seg[nz // 4: nz // 2, ny // 3: ny // 2, nx // 5: nx // 2] = 3  # a box standing in for one lung
        out = sitk.GetImageFromArray(seg)
        out.CopyInformation(image)
        sitk.WriteImage(out, str(folder / f"{scan.seriesuid}.mhd"), useCompression=True)
        geo = ScanGeometry.from_image(image)
        corners = [geo.voxel_to_world([x, y, z]) for x in (nx // 5, nx // 2 - 1) for y in (ny // 3, ny // 2 - 1)
                   for z in (nz // 4, nz // 2 - 1)]
        boxes[scan.seriesuid] = (np.min(corners, axis=0), np.max(corners, axis=0))
    report = run_build(_config(luna2, tmp_path / "p.zarr", lung_masks=str(folder)), workers=0, progress=False)
    assert report.ok, report.failures
    m = PatchStore(tmp_path / "p.zarr").manifest
    random = m[(m["kind"] == "random") & (m["scale"] == 32)]
    assert len(random) > 0
    for row in random.itertuples():
        lo, hi = boxes[row.seriesuid]
        world = np.array([row.center_x, row.center_y, row.center_z])
        assert np.all(world >= lo - 4.5) and np.all(world <= hi + 4.5)  # within one lattice cell (4 mm)


def test_a_lung_mask_on_another_grid_fails_that_scan_by_name(luna2, tmp_path):
    folder = tmp_path / "seg"
    folder.mkdir()
    for scan in luna2.scans:
        sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkUInt8), str(folder / f"{scan.seriesuid}.mhd"))
    report = run_build(_config(luna2, tmp_path / "p.zarr", lung_masks=str(folder)), workers=0, progress=False)
    assert report.scans_failed == 2
    assert all("mask grid (size [8, 8, 8]" in err and "differs from its scan's" in err for _, err in report.failures)
    assert all("direction [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])" in err for _, err in report.failures)


def test_label_regions_follow_their_nodules_whatever_the_annotation_order(luna2, tmp_path):
    """Label j + 1 went to the scan's j-th row of annotations.csv: with the file filtered or reordered, a nodule
    got another nodule's region (or none, silently). Regions are now matched by centroid."""
    import pandas as pd

    from luna_prep.report.summary import build_summary

    table = pd.read_csv(luna2.root / "annotations.csv")
    shuffled = table.iloc[::-1].iloc[1:]  # reordered, and the (original) last nodule left out
    shuffled.to_csv(tmp_path / "annotations.csv", index=False)
    cfg = _config(luna2, tmp_path / "p.zarr", masks="labels", annotations=str(tmp_path / "annotations.csv"))
    report = run_build(cfg, workers=0, progress=False)
    assert report.ok, report.failures
    m = PatchStore(tmp_path / "p.zarr").manifest
    centred = m[(m["kind"] == "nodule") & (m["scale"] == 48)]
    assert len(centred) == len(shuffled)
    labelled = centred[centred["mask_source"].isin(["label", "mixed"])]
    assert report.nodule_masks["label"] >= len(labelled) > 0
    assert report.nodule_masks["label"] + report.nodule_masks["sphere"] == len(shuffled)
    store = PatchStore(tmp_path / "p.zarr")
    for row in labelled.itertuples():
        _, mask = store.read_patch(48, row.index)
        parts, n = ndimage.label(mask)
        centres = ndimage.center_of_mass(mask, parts, range(1, n + 1))
        nearest = min(np.linalg.norm(np.subtract(c, 24)) for c in centres)
        assert nearest < max(row.diameter_mm / 2, 2.0), row  # the centred nodule's own region, not another's
    assert f"nodule masks: {report.nodule_masks['label']} from label volumes" in build_summary(report)


def test_a_missing_label_volume_is_a_warning_naming_the_scan(luna2, tmp_path):
    masks = tmp_path / "masks"
    scan = luna2.scans[0]
    for s in luna2.scans[1:]:
        (masks / f"subset{s.subset}").mkdir(parents=True, exist_ok=True)
        src = luna2.root / "masks" / f"subset{s.subset}" / f"{s.seriesuid}.mhd"
        sitk.WriteImage(sitk.ReadImage(str(src)), str(masks / f"subset{s.subset}" / f"{s.seriesuid}.mhd"))
    report = run_build(_config(luna2, tmp_path / "p.zarr", masks="labels", mask_dir=str(masks)), workers=0,
                       progress=False)
    assert report.ok
    assert [w for w in report.warnings if "no label volume" in w] == [
        f"{scan.path}: no label volume {scan.seriesuid}.mhd under {masks} (or its subset{scan.subset}/): its "
        f"{len(scan.nodules)} nodule(s) are spheres"]
