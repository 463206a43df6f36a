"""Tests of the synthetic LUNA16-shaped data generator (luna_prep.synthetic.scans)."""

from __future__ import annotations

import csv
import re

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.synthetic.scans import SynthDataset, synthesize

UID_RE = re.compile(r"^1\.3\.6\.1\.4\.1\.14519\.5\.2\.1\.9999(\.(0|[1-9][0-9]*))+$")


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> SynthDataset:
    """Five scans: 0 plain, 1 flipped direction, 2 compressed, 3 plain, 4 field-of-view clipped."""
    return synthesize(tmp_path_factory.mktemp("synth"), n_scans=5, seed=0)


@pytest.fixture(scope="module")
def volumes(ds) -> list[np.ndarray]:
    return [sitk.GetArrayFromImage(sitk.ReadImage(str(s.path))) for s in ds.scans]


def hu_at(scan, volume, world_xyz) -> int:
    v = np.rint(scan.geometry.world_to_voxel(world_xyz)).astype(int)
    assert scan.geometry.contains_voxel(v, margin=0.0), (scan.seriesuid, world_xyz)
    return int(volume[v[2], v[1], v[0]])


def test_layout_and_csv_headers(ds):
    assert [s.subset for s in ds.scans] == [0, 1, 2, 3, 4]
    uids = [s.seriesuid for s in ds.scans]
    assert len(set(uids)) == 5 and all(UID_RE.match(u) and len(u) <= 64 for u in uids)
    for s in ds.scans:
        assert s.path == ds.root / f"subset{s.subset}" / f"{s.seriesuid}.mhd" and s.path.is_file()
        data = s.path.with_suffix(".zraw" if s.subset == 2 else ".raw")
        assert data.is_file() and data.stat().st_size > 0
    assert ds.annotations_csv.read_text().splitlines()[0] == "seriesuid,coordX,coordY,coordZ,diameter_mm"
    assert ds.candidates_csv.read_text().splitlines()[0] == "seriesuid,coordX,coordY,coordZ,class"
    ann = pd.read_csv(ds.annotations_csv)
    assert list(ann.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
    cand = pd.read_csv(ds.candidates_csv)
    assert list(cand.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "class"]
    assert set(cand["class"]) == {0, 1}


def test_annotations_match_nodules_exactly(ds):
    with open(ds.annotations_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    expected = [(s.seriesuid, n) for s in ds.scans for n in s.nodules]
    assert len(rows) == len(expected) >= 5
    for row, (uid, n) in zip(rows, expected):
        assert row["seriesuid"] == uid
        assert (float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])) == n.world_xyz  # full precision
        assert float(row["diameter_mm"]) == n.diameter_mm
    for s in ds.scans:
        assert 1 <= len(s.nodules) <= 3
        assert all(3.0 <= n.diameter_mm <= 30.0 for n in s.nodules)
        for i, a in enumerate(s.nodules):  # no overlaps
            for b in s.nodules[i + 1:]:
                gap = np.linalg.norm(np.subtract(a.world_xyz, b.world_xyz)) - (a.diameter_mm + b.diameter_mm) / 2
                assert gap > 5.0


def test_images_read_back_as_int16_with_the_stated_geometry(ds, volumes):
    for s, vol in zip(ds.scans, volumes):
        image = sitk.ReadImage(str(s.path))
        assert image.GetPixelID() == sitk.sitkInt16
        assert "ElementType = MET_SHORT" in s.path.read_text()
        assert ScanGeometry.from_image(image) == s.geometry
        assert vol.shape == s.geometry.size[::-1]


def test_geometry_ranges(ds):
    for s in ds.scans:
        sx, sy, sz = s.geometry.spacing
        assert sx == sy and 0.6 <= sx <= 0.95 and 0.7 <= sz <= 2.5
        assert s.geometry.size[:2] == (192, 192)
        assert 125.0 <= sz * (s.geometry.size[2] - 1) <= 175.0
        lo, _ = s.geometry.world_bounds()
        assert -250 <= lo[0] <= -150 and -250 <= lo[1] <= -150 and -400 <= lo[2] <= -100
    assert len({s.geometry.origin for s in ds.scans}) == 5
    assert len({s.geometry.spacing for s in ds.scans}) == 5


def test_flipped_scan_has_non_identity_direction_and_origin_at_voxel_zero(ds):
    flipped = ds.scans[1]
    assert not flipped.geometry.is_identity_direction
    assert flipped.geometry.direction == (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert "TransformMatrix = -1 0 0 0 1 0 0 0 -1" in flipped.path.read_text()
    lo, hi = flipped.geometry.world_bounds()  # origin is the (max x, min y, max z) corner
    assert np.allclose(flipped.geometry.origin, (hi[0], lo[1], hi[2]))
    assert all(s.geometry.is_identity_direction for i, s in enumerate(ds.scans) if i != 1)


def test_nodules_bright_and_lung_dark_around_them(ds, volumes):
    for s, vol in zip(ds.scans, volumes):
        for n in s.nodules:
            c = np.asarray(n.world_xyz)
            assert hu_at(s, vol, c) > -200, (s.subset, n)
            probes = [hu_at(s, vol, c + (n.diameter_mm / 2 + 4.0) * d) for d in np.vstack([np.eye(3), -np.eye(3)])]
            assert max(probes) < -600, (s.subset, n, probes)  # +x first; all six directions are lung
            assert abs(np.median(probes) + 850) < 60


def test_lung_voxels_near_minus_850(ds, volumes):
    for vol in volumes:
        lungish = vol[(vol > -960) & (vol < -500)]
        assert lungish.size > 0.05 * vol.size
        assert abs(np.median(lungish) + 850) < 10
        assert abs(np.median(vol[0:3, 0:10, 0:10]) - (-2048 if vol is volumes[4] else -1000)) < 10


def test_compressed_scan_uses_zraw(ds, volumes):
    s = ds.scans[2]
    header = s.path.read_text()
    assert "CompressedData = True" in header and f"ElementDataFile = {s.seriesuid}.zraw" in header
    assert not s.path.with_suffix(".raw").exists()
    assert s.path.with_suffix(".zraw").stat().st_size < 0.8 * volumes[2].nbytes  # noise compresses poorly
    for i in (0, 1, 3, 4):
        assert "CompressedData = False" in ds.scans[i].path.read_text()


def test_field_of_view_scan_has_minus_2048_outside_circle(volumes):
    vol = volumes[4]
    assert (vol[:, 0, 0] == -2048).all() and (vol[:, -1, -1] == -2048).all()
    assert vol[:, vol.shape[1] // 2, vol.shape[2] // 2].min() > -1100  # inside the circle
    assert all(v.min() >= -1024 for i, v in enumerate(volumes) if i != 4)


def test_candidates(ds, volumes):
    cand = pd.read_csv(ds.candidates_csv)
    for s, vol in zip(ds.scans, volumes):
        rows = cand[cand.seriesuid == s.seriesuid]
        pts = rows[["coordX", "coordY", "coordZ"]].to_numpy()
        pos, neg = pts[rows["class"].to_numpy() == 1], pts[rows["class"].to_numpy() == 0]
        for n in s.nodules:  # every nodule has a class 1 row within 1 mm
            assert np.linalg.norm(pos - n.world_xyz, axis=1).min() <= 1.0
        assert all(min(np.linalg.norm(p - n.world_xyz) for n in s.nodules) <= 1.0 for p in pos)
        assert 20 <= len(neg) <= 40
        for n in s.nodules:  # class 0 rows are off the nodules
            assert np.linalg.norm(neg - n.world_xyz, axis=1).min() > n.diameter_mm / 2 + 3.0
        hu = np.array([hu_at(s, vol, p) for p in neg])
        assert (hu > -960).all()  # inside the lungs, not the air outside
        assert (hu > -600).mean() >= 0.3 and (hu < -600).mean() >= 0.2  # on vessels and in lung


def test_deterministic_per_seed(tmp_path):
    a = synthesize(tmp_path / "a", n_scans=3, seed=7)
    b = synthesize(tmp_path / "b", n_scans=3, seed=7)
    c = synthesize(tmp_path / "c", n_scans=3, seed=8)
    files_a = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 + 2 * 3
    for rel in files_a:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    assert [s.seriesuid for s in a.scans] != [s.seriesuid for s in c.scans]
    assert a.annotations_csv.read_bytes() != c.annotations_csv.read_bytes()
    raw_a, raw_c = a.scans[0].path.with_suffix(".raw"), c.scans[0].path.with_suffix(".raw")
    assert raw_a.read_bytes() != raw_c.read_bytes()


def test_more_than_ten_scans_include_nodule_free_ones(tmp_path):
    ds = synthesize(tmp_path, n_scans=12, seed=3)
    assert [s.subset for s in ds.scans] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert [i for i, s in enumerate(ds.scans) if not s.nodules] == [3, 7, 11]
    ann, cand = pd.read_csv(ds.annotations_csv), pd.read_csv(ds.candidates_csv)
    assert len(ann) == sum(len(s.nodules) for s in ds.scans)
    assert set(cand.seriesuid) == {s.seriesuid for s in ds.scans}
    assert len(list(tmp_path.glob("subset0/*.mhd"))) == 2


@pytest.mark.slow
def test_full_size_scan(tmp_path):
    ds = synthesize(tmp_path, n_scans=1, seed=0, full_size=True)
    s = ds.scans[0]
    assert s.geometry.size[:2] == (512, 512) and 280 <= s.geometry.size[2] <= 320
    assert 0.65 <= s.geometry.spacing[0] <= 0.8 and s.geometry.spacing[2] == 2.5
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(s.path)))
    for n in s.nodules:
        c = np.asarray(n.world_xyz)
        assert hu_at(s, vol, c) > -200
        assert hu_at(s, vol, c + (n.diameter_mm / 2 + 4.0, 0.0, 0.0)) < -600


def test_tiny_scans_carry_luna16_counts(tmp_path):
    """--size tiny: 64x64 scans of ~90 mm over subset0..9, 0-3 nodules, 700-990 class-0 candidates each."""
    ds = synthesize(tmp_path, n_scans=40, seed=0, size="tiny")
    assert [s.subset for s in ds.scans] == [i % 10 for i in range(40)]
    for s in ds.scans:
        g = s.geometry
        assert g.size[:2] == (64, 64) and 1.3 <= g.spacing[0] <= 1.6 and 1.5 <= g.spacing[2] <= 2.5
        assert 80.0 <= g.size[2] * g.spacing[2] <= 100.0 + g.spacing[2]
        assert len(s.nodules) <= 3 and all(3.0 <= n.diameter_mm <= 30.0 for n in s.nodules)
    assert [i for i, s in enumerate(ds.scans) if not s.nodules] == list(range(3, 40, 4))
    cand = pd.read_csv(ds.candidates_csv)
    class0 = cand[cand["class"] == 0].groupby("seriesuid").size()
    assert len(class0) == 40 and class0.between(700, 990).all()
    class1 = cand[cand["class"] == 1].groupby("seriesuid").size()
    n_nod = {s.seriesuid: len(s.nodules) for s in ds.scans}
    assert all(n_nod[u] <= k <= 2 * n_nod[u] for u, k in class1.items())  # 1-2 per nodule
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(ds.scans[0].path)))
    for n in ds.scans[0].nodules:
        assert hu_at(ds.scans[0], vol, np.asarray(n.world_xyz)) > -200


def test_workers_write_the_same_bytes(tmp_path):
    one = synthesize(tmp_path / "one", n_scans=12, seed=5, size="tiny")
    two = synthesize(tmp_path / "two", n_scans=12, seed=5, size="tiny", workers=2)
    files = sorted(p.relative_to(one.root) for p in one.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two.root) for p in two.root.rglob("*") if p.is_file())
    for rel in files:
        assert (one.root / rel).read_bytes() == (two.root / rel).read_bytes(), rel
    assert [(s.seriesuid, s.geometry, s.nodules) for s in one.scans] == \
        [(s.seriesuid, s.geometry, s.nodules) for s in two.scans]


def test_size_choices_are_checked(tmp_path):
    with pytest.raises(ValueError, match="tiny exists for difficulty easy only"):
        synthesize(tmp_path, n_scans=1, size="tiny", difficulty="luna")
    with pytest.raises(ValueError, match="size must be one of tiny, small, full"):
        synthesize(tmp_path, n_scans=1, size="small", full_size=True)
    with pytest.raises(ValueError, match="size must be one of"):
        synthesize(tmp_path, n_scans=1, size="huge")
