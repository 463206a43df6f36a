"""One preparation for training data and inference: a stored patch is exactly the region of the
volume that ``predict`` feeds the model, on a scan whose direction matrix is flipped."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from luna_prep.build import BuildConfig, run_build
from luna_prep.format.reader import PatchStore, ScanVolume
from luna_prep.format.spec import full_scale
from luna_prep.pipeline.patches import extract_patch
from luna_prep.pipeline.prepare import prepare_scan
from luna_prep.pipeline.sampling import SamplingConfig
from luna_prep.synthetic.scans import synthesize
from luna_train.inference import detect
from luna_train.inference.detect import DetectConfig
from luna_train.inference.predict_scan import predict_scan
from luna_train.run_dir import PreprocessingSpec

SCALES = (16, 24)


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    """The synthetic scan with a flipped direction matrix, built alone into a store with --volumes."""
    data = synthesize(tmp_path_factory.mktemp("synth") / "luna16", n_scans=2, seed=5)
    scan = data.scans[1]
    assert not scan.geometry.is_identity_direction
    out = tmp_path_factory.mktemp("store") / "patches.zarr"
    cfg = BuildConfig(data_root=str(data.root), out=str(out), subsets=(1,), volumes=True,
                      sampling=SamplingConfig(scales=SCALES, jitter_copies=1))
    assert run_build(cfg, workers=0, progress=False).scans_ok == 1
    return scan, PatchStore(out)


def _model_input(monkeypatch, scan, store) -> ScanVolume:
    """Run ``predict_scan`` and keep the volume whose image goes into the model."""
    seen = {}

    def probabilities(model, image, cfg):
        seen["image"] = image
        return np.zeros(image.shape, np.float32)

    def detect_volume(model, volume, cfg):
        seen["volume"] = volume
        return real_detect(model, volume, cfg)

    real_detect = detect.detect_volume
    monkeypatch.setattr(detect, "volume_probabilities", probabilities)
    monkeypatch.setattr("luna_train.inference.predict_scan.detect_volume", detect_volume)
    model = SimpleNamespace(input_size=24, voxel_mm=1.0)  # stands in for a network: probabilities are patched
    predict_scan(model, scan.path, PreprocessingSpec.from_store(store.attrs, 24, None), DetectConfig())
    assert seen["image"] is seen["volume"].image
    return seen["volume"]


def test_stored_patches_are_regions_of_what_predict_feeds_the_model(flipped, monkeypatch):
    scan, store = flipped
    fed = _model_input(monkeypatch, scan, store)
    m = store.manifest
    assert set(m["scale"]) == set(SCALES) and (m["kind"] == "nodule").any()
    asymmetric = 0
    for row in m.itertuples():
        centre = np.rint(fed.world_to_zyx([row.center_x, row.center_y, row.center_z])).astype(int)
        image, _ = store.read_patch(row.scale, row.index)
        np.testing.assert_array_equal(image, extract_patch(fed.image, centre, row.scale))
        asymmetric += not np.array_equal(image, image[::-1, ::-1, ::-1])
    assert asymmetric == len(m)  # a flip anywhere would have shown
    # the stored whole volume is the very same array, lungs and grid
    stored = store.read_volume(scan.seriesuid)
    np.testing.assert_array_equal(stored.image, fed.image)
    np.testing.assert_array_equal(stored.lungs, fed.lungs)
    assert stored.origin_xyz == fed.origin_xyz and stored.spacing_mm == fed.spacing_mm
    assert stored.original == fed.original == scan.geometry.to_dict()


@pytest.mark.parametrize("image_dtype", ["uint8", "float16"])
def test_prepare_scan_gives_an_isotropic_identity_grid_over_the_scan(flipped, image_dtype):
    scan, _ = flipped
    prepared = prepare_scan(scan.path, 1.5, (-1000.0, 400.0), image_dtype)
    vol = prepared.volume
    assert prepared.original == scan.geometry
    assert vol.geometry.is_identity_direction and vol.geometry.spacing == (1.5, 1.5, 1.5)
    assert vol.array.dtype == np.dtype(image_dtype) and vol.array.shape == tuple(vol.geometry.size[::-1])
    assert vol.array.max() <= full_scale(image_dtype) and vol.array.min() >= 0
    lo, hi = scan.geometry.world_bounds()
    np.testing.assert_allclose(vol.geometry.origin, lo)
    assert np.all(np.asarray(vol.zyx_to_world(np.asarray(vol.array.shape) - 1)) <= hi + 1e-6)
    # each nodule centre is bright (a +30 HU ball in air-filled lungs) and inside the lungs
    lungs = prepared.lungs_full()
    assert lungs.shape == vol.array.shape
    for nod in scan.nodules:
        z, y, x = np.rint(vol.world_to_zyx(nod.world_xyz)).astype(int)
        assert vol.array[z, y, x] > 0.55 * full_scale(image_dtype)
        assert lungs[z, y, x]
