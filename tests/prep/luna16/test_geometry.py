"""World <-> voxel geometry against real LUNA16 headers, and the real annotation table."""


import numpy as np
import pytest
import SimpleITK as sitk

from luna_prep.luna16.geometry import ScanGeometry, read_header_geometry
from luna_prep.luna16.tables import parse_subsets, read_annotations
from luna_prep.pipeline.resampling import isotropic_grid, resample_isotropic

from paths import DATA

UID_235 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.905371958588660410240398317235"
UID_058 = "1.3.6.1.4.1.14519.5.2.1.6279.6001.979083010707182900091062408058"


@pytest.mark.parametrize(
    "uid, world, voxel",
    [
        (UID_235, (109.1166375, 48.58951079, -120.8920582), (389.653, 320.115, 111.243)),
        (UID_058, (-104.4419748, 57.83942814, -124.3083633), (100.229, 303.344, 56.466)),
    ],
)
def test_world_to_voxel_matches_real_headers(uid, world, voxel):
    geo = read_header_geometry(DATA / "headers" / f"{uid}.mhd")
    assert geo.size == ((512, 512, 152) if uid == UID_235 else (512, 512, 140))
    np.testing.assert_allclose(geo.world_to_voxel(world), voxel, atol=1e-3)
    np.testing.assert_allclose(geo.voxel_to_world(geo.world_to_voxel(world)), world, atol=1e-9)
    assert geo.contains_voxel(geo.world_to_voxel(world))


def test_real_annotation_rows_land_inside_their_real_scans():
    ann = read_annotations(DATA / "annotations.csv")
    for uid in (UID_235, UID_058):
        geo = read_header_geometry(DATA / "headers" / f"{uid}.mhd")
        rows = ann[ann["seriesuid"] == uid]
        assert len(rows) >= 1
        vox = geo.world_to_voxel(rows[["coordX", "coordY", "coordZ"]].to_numpy())
        assert geo.contains_voxel(vox).all()


def test_real_annotations_parse_with_crlf():
    raw = (DATA / "annotations.csv").read_bytes()
    assert b"\r\n" in raw
    ann = read_annotations(DATA / "annotations.csv")
    assert len(ann) == 1186
    assert ann["seriesuid"].nunique() == 601
    assert not ann["seriesuid"].str.contains("\r").any()
    assert ann["diameter_mm"].between(3.25, 32.28).all()
    assert ann["annotation_index"].tolist() == list(range(1186))


def test_flipped_direction_round_trip_and_resampled_grid():
    geo = ScanGeometry(origin=(10.0, -20.0, 30.0), spacing=(0.7, 0.8, 2.5),
                       direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1), size=(40, 30, 12))
    p = np.array([[3.0, 4.0, 5.0], [39, 29, 11]])
    world = geo.voxel_to_world(p)
    # x runs to -x, z runs to -z from the origin
    np.testing.assert_allclose(world[0], [10 - 3 * 0.7, -20 + 4 * 0.8, 30 - 5 * 2.5])
    np.testing.assert_allclose(geo.world_to_voxel(world), p)
    grid = isotropic_grid(geo, 1.0)
    lo, hi = geo.world_bounds()
    np.testing.assert_allclose(grid.origin, lo)
    assert grid.is_identity_direction
    assert all(np.asarray(grid.origin) + (np.asarray(grid.size) - 1) <= hi + 1e-9)


def test_resampling_reorients_a_flipped_image():
    arr = np.zeros((12, 30, 40), np.int16)  # z, y, x
    arr[2, 5, 7] = 1000  # one bright voxel at index (x=7, y=5, z=2)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 1.0))
    img.SetOrigin((10.0, -20.0, 30.0))
    img.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))
    world = ScanGeometry.from_image(img).voxel_to_world([7, 5, 2])
    vol = resample_isotropic(img, 1.0)
    zyx = np.rint(vol.world_to_zyx(world)).astype(int)
    assert vol.array[tuple(zyx)] == pytest.approx(1000)
    assert np.unravel_index(np.argmax(vol.array), vol.array.shape) == tuple(zyx)


@pytest.mark.parametrize("spec, expected", [("0-9", list(range(10))), ("3", [3]), ("0,2,5", [0, 2, 5]),
                                            ("0-3,7", [0, 1, 2, 3, 7])])
def test_parse_subsets(spec, expected):
    assert parse_subsets(spec) == expected


@pytest.mark.parametrize("spec", ["", "a", "3-1", "1-", "0-12", "10"])
def test_parse_subsets_rejects_bad_specs(spec):
    with pytest.raises(ValueError):
        parse_subsets(spec)


@pytest.mark.parametrize("image_dtype", ["uint8", "float16"])
def test_slab_by_slab_resampling_and_encoding_equals_the_whole_volume_path(image_dtype):
    """The build resamples and encodes a few slices at a time; every stored value must be what resampling
    the whole volume and encoding it gives, on the real CT (3 mm, non-identity direction) and on a flipped
    anisotropic volume with an origin that is no round number."""
    from luna_prep.pipeline.resampling import encode_hu, resample_encoded

    real = sitk.ReadImage(str(DATA / "example_ct.nii.gz"), sitk.sitkFloat32)
    rng = np.random.default_rng(0)
    noise = sitk.GetImageFromArray(rng.normal(-500, 400, (23, 31, 29)).astype(np.float32))
    noise.SetSpacing((0.71, 0.83, 2.5))
    noise.SetOrigin((-123.4567, 89.0123, -301.777))
    noise.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, -1))
    for image, spacing in ((real, 1.5), (noise, 1.0), (noise, 1.5)):
        whole = resample_isotropic(image, spacing)
        expected = encode_hu(whole.array, (-1000, 400), image_dtype)
        for slab in (1, 7, 32):
            got = resample_encoded(image, spacing, (-1000, 400), image_dtype, slab=slab)
            assert got.geometry == whole.geometry
            assert got.array.dtype == expected.dtype and np.array_equal(got.array, expected), (spacing, slab)
