"""Tests of the ``luna`` chest phantom: nodule mix, vessel trees, rendered masks, geometry, candidates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from phantom_samples import placed_chests

from luna_prep.synthetic.lesions import (
    KINDS,
    LOCATIONS,
    LUNA16_DIAMETER_QUANTILES,
    SHAPES,
    lesion_fraction,
    luna16_diameter,
    make_lesion,
)
from luna_prep.synthetic.phantom import sample_chest, sample_geometry
from luna_prep.synthetic.scans import IDENTITY, synthesize
from luna_prep.synthetic.shape_bank import load_shape_bank
from luna_prep.synthetic.trees import surface_distances

from paths import DATA


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """Five luna scans: 1 has a flipped direction, 2 is compressed, 4 has a clipped field of view."""
    return synthesize(tmp_path_factory.mktemp("luna"), n_scans=5, seed=1, difficulty="luna")


@pytest.fixture(scope="module")
def volumes(ds):
    return [sitk.GetArrayFromImage(sitk.ReadImage(str(s.path))) for s in ds.scans]


@pytest.fixture(scope="module")
def many_lesions():
    """About 400 lesions placed (not rendered) in 100 phantom chests."""
    return [(chest, les) for chest in placed_chests(11, 100) for les in chest.lesions]


def test_diameters_follow_luna16(many_lesions):
    real = pd.read_csv(DATA / "annotations.csv")["diameter_mm"].clip(3.0, 30.0).to_numpy()
    rng = np.random.default_rng(0)
    drawn = np.array([luna16_diameter(rng) for _ in range(5000)])
    placed = np.array([les.diameter_mm for _, les in many_lesions])
    assert len(placed) >= 350 and placed.min() >= 3.0 and placed.max() <= 30.0
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):  # drawn: within 5% of LUNA16's quantiles; placed (the largest
        r = np.quantile(real, q)  # fit less often into the small test chests): within 20%
        assert abs(np.quantile(drawn, q) / r - 1.0) < 0.05 and abs(np.quantile(placed, q) / r - 1.0) < 0.2, q
    assert LUNA16_DIAMETER_QUANTILES[10] == pytest.approx(np.median(real), abs=0.01)


def test_kind_location_and_shape_mix_is_what_was_asked(many_lesions):
    n = len(many_lesions)
    for table, attr in ((KINDS, "kind"), (LOCATIONS, "location"), (SHAPES, "shape")):
        for name, p in table.items():
            share = sum(getattr(les, attr) == name for _, les in many_lesions) / n
            assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.01, (attr, name, share, p)


def test_locations_touch_what_they_say(many_lesions):
    for chest, les in many_lesions:
        c = np.asarray(les.center)
        gap = surface_distances(chest.vessels, c).min() - les.r0
        if les.location == "juxta-vascular":
            assert gap < 0.05 * les.diameter_mm + 0.1, les  # its surface reaches the vessel
        elif les.location == "juxta-pleural":
            assert any(lung.rho(*(c + les.r0 * u)) >= 1.0 for lung in chest.lungs
                       for u in np.vstack([np.eye(3), -np.eye(3), np.ones((1, 3)) / 3**0.5]))
        else:
            assert gap > 1.0 and chest.in_lung(c, les.r0), les


def test_vessels_form_tapering_trees(tmp_path):
    rng = np.random.default_rng(3)
    geom = sample_geometry(rng, True, IDENTITY)
    chest = sample_chest(rng, geom, False)
    v = chest.vessels
    roots = [t for t in v if t.depth == 0]
    assert len(roots) == 10  # five per lung, from the hila
    assert all(2 * t.ra > 6.0 for t in roots) and min(2 * t.rb for t in v) < 1.0
    assert all(t.rb < t.ra for t in v)
    ends = {t.b: t for t in v}
    for t in v:  # a child starts where its parent ends, thinner than the parent's end
        if t.depth:
            parent = ends[t.a]
            assert parent.depth == t.depth - 1 and t.ra < parent.rb
    assert len(v) > 1000 and max(t.depth for t in v) >= 8
    c = np.array([np.asarray(t.b) for t in v])  # they fill each lung in all directions
    for lung in chest.lungs:
        rel = (c - lung.center) / lung.semi
        inside = c[np.linalg.norm(rel, axis=1) < 1]
        for axis in range(3):
            assert np.ptp(inside[:, axis]) > 1.4 * lung.semi[axis]
    assert len(chest.airways) > 10 and all(chest.in_lung(t.b, 0.0) for t in chest.airways[3:])


def test_rendered_masks_sit_at_the_annotations(ds):
    ann = pd.read_csv(ds.annotations_csv)
    assert (ds.root / "nodules.csv").is_file()
    for s in ds.scans:
        labels = sitk.ReadImage(str(s.mask_path))
        lab = sitk.GetArrayFromImage(labels)
        assert labels.GetSize() == s.geometry.size and labels.GetDirection() == s.geometry.direction
        assert lab.max() == len(s.nodules) == (ann.seriesuid == s.seriesuid).sum()
        for j, n in enumerate(s.nodules):
            zyx = np.argwhere(lab == j + 1)
            world = s.geometry.voxel_to_world(zyx[:, ::-1].mean(axis=0))
            volume = len(zyx) * np.prod(s.geometry.spacing)
            tol = 0.6 if n.shape == "round" else 0.25 * n.diameter_mm + 0.6  # lobes and spicules shift it,
            tol += 0.2 * n.diameter_mm if n.location == "juxta-pleural" else 0.0  # and the pleura cuts it
            assert np.linalg.norm(world - n.world_xyz) < tol, (s.subset, n)
            expected = np.pi / 6 * n.diameter_mm ** 3
            low = 0.4 if n.location == "juxta-pleural" else 0.6
            high = 1.6 if n.shape != "spiculated" else 2.5
            assert low * expected < volume < high * expected, (s.subset, n, volume)


def test_nodule_types_have_their_hu(ds, volumes):
    for s, vol in zip(ds.scans, volumes):
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(s.mask_path)))
        for j, n in enumerate(s.nodules):
            hu = vol[lab == j + 1]
            core = np.quantile(hu, 0.9)
            if n.kind == "ground-glass":
                assert -800 < np.median(hu) < -200, n  # vessels may cross it
            elif n.kind == "calcified":
                assert core > 200, n
            elif n.kind == "solid":
                assert np.median(hu) > -300, n


def test_scanner_geometry_is_luna_like():
    sz, sxy = [], []
    for i in range(200):
        g = sample_geometry(np.random.default_rng([9, i]), True, IDENTITY)
        sxy.append(g.spacing[0])
        sz.append(g.spacing[2])
        assert g.size[:2] == (512, 512) and 280 <= g.size[2] * g.spacing[2] <= 362
    assert 0.5 <= min(sxy) and max(sxy) <= 0.98 and 0.65 < np.median(sxy) < 0.75
    assert set(sz) <= {0.625, 0.7, 1.0, 1.25, 1.8, 2.0, 2.5} and {0.625, 1.25, 2.5} <= set(sz)


def test_flipped_scan_and_candidates(ds, volumes):
    assert not ds.scans[1].geometry.is_identity_direction
    cand = pd.read_csv(ds.candidates_csv)
    for s, vol in zip(ds.scans, volumes):
        rows = cand[cand.seriesuid == s.seriesuid]
        neg = rows[rows["class"] == 0][["coordX", "coordY", "coordZ"]].to_numpy()
        assert 80 <= len(neg) <= 160
        vox = np.rint(s.geometry.world_to_voxel(neg)).astype(int)
        hu = vol[vox[:, 2], vox[:, 1], vox[:, 0]]
        assert (hu > -600).mean() > 0.4  # mostly on vessels, airway walls and pleura
        for n in s.nodules:
            assert np.linalg.norm(neg - n.world_xyz, axis=1).min() > n.diameter_mm / 2


def test_luna_deterministic_per_seed(tmp_path):
    a = synthesize(tmp_path / "a", n_scans=2, seed=4, difficulty="luna")
    b = synthesize(tmp_path / "b", n_scans=2, seed=4, difficulty="luna")
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.root) for p in b.root.rglob("*") if p.is_file()) and len(files) == 11
    for rel in files:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel


def test_unknown_difficulty_is_refused(tmp_path):
    with pytest.raises(ValueError, match="easy, luna"):
        synthesize(tmp_path, n_scans=1, difficulty="hard")


def test_shape_bank_holds_the_lidc_readers_outlines():
    bank = load_shape_bank()
    assert len(bank) == 4 and all("905371958588660410240398317235 nodule 0 reader" in s.source for s in bank)
    assert all(s.spacing == (0.78125, 0.78125, 2.5) for s in bank)
    real = 21.58311204  # its diameter in annotations.csv
    assert all(abs(s.equivalent_diameter_mm - real) < 2.0 for s in bank)


def test_real_shapes_are_scaled_to_the_drawn_diameter():
    rng = np.random.default_rng(0)
    for d in (5.0, 12.0, 25.0):
        les = make_lesion(rng, (1.0, 2.0, 3.0), d, "solid", "isolated", "lidc", 40.0)
        g = np.arange(-20, 20.25, 0.25)
        x, y, z = g[:, None, None] + 1.0, g[None, :, None] + 2.0, g[None, None, :] + 3.0
        body, _ = lesion_fraction(les, x, y, z, None)
        m = body >= 0.5
        assert 0.85 < m.sum() * 0.25 ** 3 / (np.pi / 6 * d ** 3) < 1.05
        centroid = np.array([np.broadcast_to(a, m.shape)[m].mean() for a in (x, y, z)])
        assert np.linalg.norm(centroid - (1.0, 2.0, 3.0)) < 0.05 * d + 0.1
        assert np.sqrt(((np.argwhere(m) * 0.25 - 20.0 - centroid + (1, 2, 3)) ** 2).sum(axis=1)).max() <= les.reach


def test_cli_difficulty_option(tmp_path):
    from click.testing import CliRunner

    from luna_prep.cli import main

    res = CliRunner().invoke(main, ["synth", "--out", str(tmp_path), "--scans", "1", "--difficulty", "luna"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "nodules.csv").is_file() and list((tmp_path / "masks" / "subset0").glob("*.mhd"))
    # luna is the default (issue 12): the same files, byte for byte, without the option
    res = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "d"), "--scans", "1"])
    assert res.exit_code == 0, res.output
    for f in sorted(p.relative_to(tmp_path / "d") for p in (tmp_path / "d").rglob("*") if p.is_file()):
        assert (tmp_path / "d" / f).read_bytes() == (tmp_path / f).read_bytes(), f
    res = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "x"), "--difficulty", "hard"])
    assert res.exit_code != 0 and "hard" in res.output
