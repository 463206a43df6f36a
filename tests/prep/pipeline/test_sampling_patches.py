"""Sample centres and patch cutting on tiny volumes."""

import numpy as np
import pytest

from luna_prep.pipeline.lungmask import lung_mask
from luna_prep.pipeline.patches import extract_patch, nodule_mask
from luna_prep.pipeline.sampling import (
    Nodule,
    SamplingConfig,
    nodule_centres,
    planned_counts,
    random_centres,
    touches_nodule,
)


def test_extract_patch_pads_with_air_beyond_the_edge():
    vol = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7) + 1
    p = extract_patch(vol, (0, 0, 0), 4)  # voxel [2,2,2] of the patch is vol[0,0,0]
    assert p.shape == (4, 4, 4)
    assert p[2, 2, 2] == vol[0, 0, 0]
    assert (p[:2] == 0).all() and (p[:, :2] == 0).all() and (p[:, :, :2] == 0).all()
    np.testing.assert_array_equal(p[2:, 2:, 2:], vol[:2, :2, :2])
    assert (extract_patch(vol, (100, 100, 100), 4) == 0).all()


def test_patches_cut_into_a_reused_buffer_equal_fresh_ones():
    """The build cuts each shard's patches into arrays it reuses: every voxel of a stale buffer is
    overwritten, padding included; masks likewise."""
    vol = np.arange(20 * 21 * 22, dtype=np.uint8).reshape(20, 21, 22)
    nodules = [Nodule(0, np.array([10.0, 10.0, 10.0]), 3.0, 6.0)]
    out, mask_out = np.full((6, 6, 6), 77, np.uint8), np.full((6, 6, 6), 9, np.uint8)
    for centre in [(10, 10, 10), (0, 3, 21), (25, 25, 25), (19, 0, 5), (10, 12, 9)]:
        assert np.array_equal(extract_patch(vol, centre, 6, out=out), extract_patch(vol, centre, 6))
        got, sources = nodule_mask(np.asarray(centre), 6, nodules, out=mask_out)
        want, want_sources = nodule_mask(np.asarray(centre), 6, nodules)
        assert got is mask_out and np.array_equal(got, want) and sources == want_sources


def test_sphere_mask_is_the_union_of_every_nodule_reaching_in():
    a = Nodule(0, np.array([10.0, 10.0, 10.0]), 3.0, 6.0)
    b = Nodule(1, np.array([10.0, 10.0, 17.5]), 2.0, 4.0)  # reaches in from beside the centred one
    far = Nodule(2, np.array([40.0, 40.0, 40.0]), 3.0, 6.0)
    m, sources = nodule_mask((10, 10, 10), 16, [a, b, far])  # patch covers 2..17 on each axis
    assert sources == {"sphere"}
    assert m[8, 8, 8] == 1 and m[8, 8, 15] == 1  # both nodules' centres (patch coords = world - 2)
    only_a, _ = nodule_mask((10, 10, 10), 16, [a])
    assert m.sum() > only_a.sum()
    # voxel count of a sphere of radius 3 centred on a voxel: 123 lattice points
    assert only_a.sum() == 123


@pytest.mark.parametrize("centre", [(50.2, 60.7, 70.4), (50.49, 60.49, 70.49), (50.0, 60.0, 70.0)])
def test_jitter_keeps_the_nodule_well_inside_the_smallest_patch(centre):
    """``jitter_margin_vox`` empty voxels between the mask and every face of the smallest patch, on the high side
    of an even patch (one voxel shorter) and with the centre rounded half a voxel away, too."""
    cfg = SamplingConfig(scales=(48, 64), jitter_copies=400, max_jitter_mm=30.0)
    nod = Nodule(0, np.array(centre), 12.0, 24.0)
    centres = nodule_centres([nod], cfg, 1.0, np.random.default_rng(0))
    assert len(centres) == 401 and centres[0].centre_zyx == tuple(np.rint(centre).astype(int))
    gaps = []
    for c in centres:
        filled = np.argwhere(nodule_mask(np.asarray(c.centre_zyx), 48, [nod])[0])
        gaps.append(min(filled.min(), (47 - filled).min()))  # empty layers to the nearest face
    assert cfg.jitter_margin_vox <= min(gaps) <= cfg.jitter_margin_vox + 1  # kept, and not given away
    assert len({c.centre_zyx for c in centres}) > 10  # copies really move


def test_planned_counts_follow_the_ratio_and_floor():
    cfg = SamplingConfig(jitter_copies=4, negative_ratio=3.0, hard_fraction=0.5, min_negatives=6)
    assert planned_counts(2, 1000, cfg) == {"nodule": 10, "candidate": 15, "random": 15}
    assert planned_counts(0, 1000, cfg) == {"nodule": 0, "candidate": 3, "random": 3}
    assert planned_counts(2, 4, cfg) == {"nodule": 10, "candidate": 4, "random": 26}


def _toy_chest():
    """uint8-like normalized volume: body 0.7, two lung boxes at 0.1, air 0 outside."""
    vol = np.zeros((40, 60, 80), np.float32)
    vol[:, 10:50, 10:70] = 0.74
    vol[:, 15:45, 15:35] = 0.11
    vol[:, 15:45, 45:65] = 0.11
    return vol


def test_lung_mask_excludes_air_outside_the_body():
    vol = _toy_chest()
    lungs = lung_mask(vol, 1.0, (-1000, 400), grid_mm=2.0).upsample(vol.shape)
    assert lungs[20, 30, 25] and lungs[20, 30, 55]
    assert not lungs[20, 2, 2] and not lungs[20, 30, 40]


def test_random_centres_avoid_nodules_and_stay_in_the_lungs():
    vol = _toy_chest()
    lungs = lung_mask(vol, 1.0, (-1000, 400), grid_mm=2.0)
    nod = Nodule(0, np.array([20.0, 30.0, 25.0]), 3.0, 6.0)
    centres = random_centres(50, lungs, vol.shape, [nod], 16, np.random.default_rng(1))
    zyx = np.array([c.centre_zyx for c in centres])
    assert not touches_nodule(zyx, [nod], 16).any()
    assert (vol[tuple(zyx.T)] < 0.3).mean() > 0.9


def test_random_centres_return_what_fits_in_a_scan_smaller_than_the_patch():
    """A patch larger than the scan touches the nodule wherever it goes: none is placed, and no error (it failed
    the whole scan, nodules included)."""
    vol = _toy_chest()
    lungs = lung_mask(vol, 1.0, (-1000, 400), grid_mm=2.0)
    nod = Nodule(0, np.array([20.0, 30.0, 25.0]), 3.0, 6.0)
    assert random_centres(7, lungs, vol.shape, [nod], 2 * max(vol.shape), np.random.default_rng(1)) == []


def test_nodule_mask_paints_a_given_mask_and_names_its_source():
    blob = np.zeros((3, 4, 5), bool)
    blob[1, 1:3, 1:4] = True
    lidc = Nodule(0, np.array([11.0, 11.5, 12.0]), 2.0, 4.0, mask=blob, mask_lo_zyx=np.array([10, 10, 10]))
    sphere = Nodule(1, np.array([4.0, 4.0, 4.0]), 1.0, 2.0)
    m, sources = nodule_mask((10, 10, 10), 16, [lidc])  # patch voxel 0 = volume voxel 2
    assert sources == {"lidc"} and m.sum() == blob.sum()
    assert m[9, 9:11, 9:12].all()
    m, sources = nodule_mask((10, 10, 10), 16, [lidc, sphere])
    assert sources == {"lidc", "sphere"} and m.sum() == blob.sum() + 7
    _, sources = nodule_mask((40, 40, 40), 16, [lidc, sphere])
    assert sources == set()


def test_sphere_masks_are_every_voxel_centre_within_the_radius():
    """Brute force over the whole patch, for nodules inside, across and beyond its edges."""
    rng = np.random.default_rng(3)
    size = 24
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), axis=-1).astype(np.float64)
    for _ in range(40):
        centre = rng.uniform(-6, 36, 3)
        radius = rng.uniform(0.4, 9.0)
        nod = Nodule(0, centre, radius, 2 * radius)
        got, _ = nodule_mask((12, 12, 12), size, [nod])  # patch voxel 0 = volume voxel 0
        expected = ((grid - centre) ** 2).sum(axis=-1) <= radius * radius
        assert np.array_equal(got.astype(bool), expected), (centre, radius)
