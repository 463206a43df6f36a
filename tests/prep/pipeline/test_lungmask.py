"""The lung mask leaves abdominal gas out: on a real abdominal CT and on the luna phantom."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from luna_prep.pipeline.lungmask import lung_mask
from luna_prep.pipeline.resampling import encode_hu, resample_isotropic
from luna_prep.synthetic.scans import synthesize

from paths import DATA

WINDOW = (-1000.0, 400.0)


def _air_components(hu: np.ndarray):
    """Labels of air (< -400 HU), and those over 100 voxels not touching the in-plane border, largest first."""
    labels, _ = ndimage.label(hu < -400)
    border = set(np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(),
                                           labels[:, :, 0].ravel(), labels[:, :, -1].ravel()])))
    sizes = np.bincount(labels.ravel())
    order = [i for i in np.argsort(-sizes) if i and i not in border and sizes[i] > 100]
    return labels, order


def test_real_abdominal_ct_keeps_the_lung_bases_and_drops_the_colon_gas():
    image = sitk.ReadImage(str(DATA / "example_ct.nii.gz"))  # 3 mm isotropic: no resampling needed
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    labels, order = _air_components(hu)
    gas = [i for i in order if np.median(hu[labels == i]) < -950]  # two colon gas pockets, 23 and 11 ml
    lung = [i for i in order if np.median(hu[labels == i]) > -850 and (labels == i).sum() > 1000]  # the two bases
    assert len(gas) == 2 and len(lung) == 2
    for grid in (3.0, 6.0):
        m = lung_mask(np.clip((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1), 3.0, WINDOW, grid_mm=grid)
        up = m.upsample(hu.shape)
        for i in gas:
            assert not (up & (labels == i)).any(), (grid, i)
        for i in lung:
            assert (up & (labels == i)).sum() >= 0.75 * (labels == i).sum(), (grid, i)
        assert not up[: int(0.85 * hu.shape[0])].any()  # the lung bases are in the top slices only


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("luna"), n_scans=3, seed=5, difficulty="luna")


def test_phantom_gas_is_not_lung_but_the_lungs_are(phantom):
    for s in phantom.scans:
        vol = resample_isotropic(sitk.ReadImage(str(s.path)), 1.0)
        hu = vol.array
        enc = encode_hu(hu, WINDOW, "uint8")
        up = lung_mask(enc, vol.spacing, WINDOW, full_scale=255.0).upsample(enc.shape)
        smooth = ndimage.uniform_filter(hu, 5)
        labels, order = _air_components(hu)
        body_gas = [i for i in order if np.median(hu[labels == i]) < -970]
        assert body_gas, s.seriesuid  # the phantom has stomach/colon gas
        for i in body_gas:
            assert (up & (labels == i)).sum() <= 0.02 * (labels == i).sum(), (s.seriesuid, i)
        parenchyma = (smooth > -900) & (smooth < -750) & np.isin(labels, order)  # lung-like air inside the body
        assert (up & parenchyma).sum() >= 0.95 * parenchyma.sum(), s.seriesuid
        assert up.sum() * vol.spacing ** 3 > 100_000  # two lungs, > 100 ml


def test_holes_filled_per_slice_at_once_equal_binary_fill_holes_slice_by_slice():

    from luna_prep.pipeline.lungmask import fill_holes_per_slice

    rng = np.random.default_rng(0)
    for density in (0.3, 0.5, 0.7):
        mask = ndimage.binary_opening(rng.random((6, 40, 37)) < density)
        mask[2, 5:15, 5:15] = True
        mask[2, 8:12, 8:12] = False  # a hole in one slice, open to the slices above and below
        filled = fill_holes_per_slice(mask)
        expected = np.stack([ndimage.binary_fill_holes(s) for s in mask])
        assert np.array_equal(filled, expected)
        assert filled[2, 8:12, 8:12].all()
    assert np.array_equal(fill_holes_per_slice(np.ones((2, 4, 4), bool)), np.ones((2, 4, 4), bool))


def test_closing_by_max_and_min_filters_equals_binary_closing():
    from luna_prep.pipeline.lungmask import close_by_cube

    rng = np.random.default_rng(1)
    for density in (0.05, 0.3, 0.6):
        mask = rng.random((12, 30, 25)) < density
        mask[0, 0, 0] = mask[-1, -1, -1] = True  # at the border, where border_value=0 erodes
        expected = ndimage.binary_closing(mask, structure=np.ones((3, 3, 3), bool), iterations=2, border_value=0)
        assert np.array_equal(close_by_cube(mask), expected)
