"""The luna phantom's confounders (lymph nodes, atelectasis, mucus-filled airways) and its candidates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from phantom_samples import placed_chests

from luna_prep.synthetic.confounders import (
    BUD_MM,
    HILAR_MM,
    INTRAPULMONARY_COUNTS,
    INTRAPULMONARY_MM,
    P_ATELECTASIS,
    P_TREE_IN_BUD,
    hilum,
)
from luna_prep.synthetic.findings import bifurcations, candidates, place_lesions
from luna_prep.synthetic.phantom import sample_chest, sample_geometry
from luna_prep.synthetic.scans import IDENTITY, synthesize
from luna_prep.synthetic.trees import surface_distances


@pytest.fixture(scope="module")
def chests():
    """60 small phantom chests with up to 4 lesions each (placed, not rendered)."""
    return placed_chests(21, 60)


def _of(chest, kind):
    return [b for b in chest.blobs if b.kind == kind]


def test_hilar_nodes_sit_beside_the_vessels_at_the_hila(chests):
    counts = [len(_of(chest, "hilar node")) for chest in chests]
    assert max(counts) <= 4 and 1.5 < np.mean(counts) <= 2.0  # 0-2 per hilum (a few placements fail)
    for chest in chests:
        for b in _of(chest, "hilar node"):
            d = min(np.linalg.norm(np.asarray(b.center) - hilum(lung, chest.lungs)) for lung in chest.lungs)
            assert d <= 18.0 and HILAR_MM[0] / 2 <= max(b.semi) <= HILAR_MM[1] / 2 and chest.in_lung(b.center)
            gap = surface_distances(chest.vessels, b.center).min()
            assert 0.5 * min(b.semi) < gap < max(b.semi) + 2.0  # beside a vessel, not in it
            assert 20.0 <= b.hu <= 60.0


def test_intrapulmonary_nodes_are_lentiform_under_the_pleura(chests):
    counts = [len(_of(chest, "intrapulmonary node")) for chest in chests]
    expected = sum(k * p for k, p in INTRAPULMONARY_COUNTS.items())
    assert max(counts) <= 3 and abs(np.mean(counts) - expected) < 0.35
    for chest in chests:
        for b in _of(chest, "intrapulmonary node"):
            normal = np.asarray(b.rotation).reshape(3, 3)[2]  # the short axis, along the pleura's normal
            assert b.semi[2] < b.semi[1] < b.semi[0]
            assert INTRAPULMONARY_MM[0] / 2 <= b.semi[0] <= INTRAPULMONARY_MM[1] / 2
            assert chest.in_lung(b.center) and not chest.in_lung(np.asarray(b.center) + normal * (b.semi[2] + 6.5))


def test_atelectasis_and_tree_in_bud_occur_as_often_as_asked(chests):
    n = len(chests)
    atelectasis = np.mean([bool(_of(chest, "atelectasis")) for chest in chests])
    plugged = np.mean([bool(chest.plugs) for chest in chests])
    for share, p in ((atelectasis, P_ATELECTASIS), (plugged, P_TREE_IN_BUD)):
        assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.05
    for chest in chests:
        assert set(chest.plugs) <= set(chest.airways)  # mucus fills existing small airways
        assert all(t.depth >= 2 and t.rb <= 1.6 for t in chest.plugs)
        for b in _of(chest, "bud"):
            assert BUD_MM[0] / 2 <= b.semi[0] <= BUD_MM[1] / 2
            assert min(np.linalg.norm(np.asarray(b.center) - t.b) for t in chest.plugs) < 2.0  # at a plug's end
        for b in _of(chest, "atelectasis"):
            assert b.semi[1] < 2.0 < b.semi[2] < b.semi[0] * 2  # a thin plate reaching in from the pleura


def test_lesions_stay_off_the_confounders(chests):
    n_lesions = 0
    for chest in chests:
        for les in chest.lesions:
            n_lesions += 1
            c = np.asarray(les.center)
            assert all(np.linalg.norm(c - b.center) >= les.reach + max(b.semi) + 2.0 for b in chest.blobs)
            assert surface_distances(chest.plugs, c).min(initial=np.inf) > les.reach + 2.0
    assert n_lesions > 150


def test_candidates_lie_where_a_detector_fires():
    """A full-size chest: hundreds of class-0 candidates on vessels (about a third at bifurcations), airway
    walls, the pleura and the confounders; parenchyma far from all of them is rare."""
    rng = np.random.default_rng(5)
    geom = sample_geometry(rng, True, IDENTITY)
    chest = sample_chest(rng, geom, False)
    chest = replace(chest, lesions=tuple(place_lesions(rng, geom, chest, 3)))
    rows = candidates(rng, chest, 700)
    neg = np.array([p for p, cls in rows if cls == 0])
    assert len(neg) == 700 and sum(cls for _, cls in rows) >= len(chest.lesions)
    forks = np.array(bifurcations(chest.vessels))
    near_fork = np.array([np.linalg.norm(forks - p, axis=1).min() < 1.5 for p in neg])
    on_vessel = np.array([surface_distances(chest.vessels, p).min() < 0.5 for p in neg])
    on_airway = np.array([abs(surface_distances(chest.airways, p).min()) < 1.0 for p in neg])
    on_pleura = np.array([min(lung.rho(*p) for lung in chest.lungs) > 0.92 for p in neg])
    on_blob = np.array([min([b.rho(p) for b in chest.blobs], default=9.0) < 1.5 for p in neg])
    assert 0.28 < near_fork.mean() < 0.6 and 0.45 < on_vessel.mean()  # short branches: axis points near forks too
    assert (on_vessel | on_airway | on_pleura | on_blob).mean() > 0.9
    assert on_airway.mean() > 0.1 and on_pleura.mean() > 0.1 and on_blob.mean() > 0.03
    for les in chest.lesions:
        assert np.linalg.norm(neg - les.center, axis=1).min() > les.reach + 3.0


@pytest.fixture(scope="module")
def full_size(tmp_path_factory):
    """One full-size luna scan (seed 0: 2.5 mm slices, the quickest to write)."""
    return synthesize(tmp_path_factory.mktemp("full"), n_scans=1, seed=0, full_size=True, difficulty="luna")


def test_full_size_scans_have_hundreds_of_candidates_on_dense_structures(full_size):
    s = full_size.scans[0]
    cand = pd.read_csv(full_size.candidates_csv)
    neg = cand[cand["class"] == 0][["coordX", "coordY", "coordZ"]].to_numpy()
    assert 400 <= len(neg) <= 1000  # candidates_V2.csv: about 850 per scan
    vol = sitk.GetArrayFromImage(sitk.ReadImage(str(s.path)))
    vox = np.rint(s.geometry.world_to_voxel(neg)).astype(int)
    hu = vol[vox[:, 2], vox[:, 1], vox[:, 0]]
    assert (hu > -600).mean() > 0.5  # mostly on vessels, walls and confounders, not in air


def test_confounders_render_as_soft_tissue_and_are_not_annotated(tmp_path):
    ds = synthesize(tmp_path, n_scans=2, seed=3, difficulty="luna")
    seen = 0
    for i, s in enumerate(ds.scans):
        rng = np.random.default_rng([3, i, 0, 2])  # the scan's own chest, as scans._luna_scan draws it
        chest = sample_chest(rng, sample_geometry(rng, False, s.geometry.direction), i == 4)
        vol = sitk.GetArrayFromImage(sitk.ReadImage(str(s.path)))
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(s.mask_path)))
        for b in chest.blobs:
            if min(b.semi) < 1.4:  # thin plates and small buds fade by partial volume
                continue
            x, y, z = np.rint(s.geometry.world_to_voxel(b.center)).astype(int)
            assert np.median(vol[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2]) > -250, b
            assert lab[z, y, x] == 0
            seen += 1
    assert seen >= 4
