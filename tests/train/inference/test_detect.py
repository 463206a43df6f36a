"""Scan-level detection and single-scan prediction, with a stand-in model whose output is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from luna_prep.format.reader import ScanVolume
from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.synthetic.scans import synthesize
from luna_train.config import DataConfig, TrainConfig
from luna_train.evaluation.froc import compute_froc
from luna_train.inference.detect import (
    DetectConfig,
    air_value,
    candidates_from_probabilities,
    detect_volume,
    volume_probabilities,
)
from luna_train.inference.postprocess import PostprocessConfig
from luna_train.inference.predict_scan import predict_scan
from luna_train.run_dir import PreprocessingSpec


class BrightBlobModel:
    """Stands in for a trained network: probability = how far a voxel's 3^3 mean exceeds tissue level."""

    device = torch.device("cpu")

    def __init__(self, train_size=24, eval_scale=24):
        self.config = TrainConfig(data=DataConfig(train_size=train_size, eval_scale=eval_scale))

    @property
    def input_size(self):
        return self.config.data.train_size

    @property
    def voxel_mm(self):
        return self.config.data.eval_scale / self.config.data.train_size

    def probabilities(self, x):
        pooled = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False)
        return pooled.sub(0.6).mul(8).clamp(0, 1)


def _volume_with_balls(centres_zyx, radius=4.0, shape=(60, 70, 80)) -> ScanVolume:
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    image = np.full(shape, 0.1, np.float32)
    for c in centres_zyx:
        image[np.linalg.norm(grid - np.asarray(c), axis=-1) <= radius] = 0.75
    return ScanVolume("1.2.3", image, np.ones(shape, bool), (-100.0, -50.0, 20.0), 1.0, {})


@pytest.mark.parametrize("eval_scale", [24, 36])  # model voxels of 1 mm and of 1.5 mm
def test_candidates_land_on_the_balls(eval_scale):
    centres = [(20, 30, 25), (40, 40, 60)]
    volume = _volume_with_balls(centres)
    model = BrightBlobModel(train_size=24, eval_scale=eval_scale)
    prob = volume_probabilities(model, volume.image, DetectConfig())
    assert prob.shape == volume.image.shape
    cands = candidates_from_probabilities(prob, volume, DetectConfig())
    assert len(cands) == 2 and (cands["probability"] > 0.5).all()
    found = volume.world_to_zyx(cands[["coordX", "coordY", "coordZ"]].to_numpy())
    for c in centres:
        assert np.min(np.linalg.norm(found - np.asarray(c), axis=1)) < 1.0


def test_candidates_stay_inside_the_dilated_lungs_and_are_capped():
    volume = _volume_with_balls([(20, 30, 25), (40, 40, 60)])
    lungs = np.zeros_like(volume.lungs)
    lungs[:, :, :45] = True  # the second ball is 15 mm beyond the lungs
    volume = ScanVolume(volume.seriesuid, volume.image, lungs, volume.origin_xyz, 1.0, {})
    prob = volume_probabilities(BrightBlobModel(), volume.image, DetectConfig())
    assert len(candidates_from_probabilities(prob, volume, DetectConfig(lung_margin_mm=8))) == 1
    assert len(candidates_from_probabilities(prob, volume, DetectConfig(lung_margin_mm=0, max_candidates=5))) == 1
    many = candidates_from_probabilities(prob, volume, DetectConfig(lung_margin_mm=40, max_candidates=1))
    assert len(many) == 1


def test_detection_on_synthetic_scans_scores_a_perfect_froc(tmp_path):
    """The stand-in finds every synthetic nodule (and bright look-alikes): every nodule is hit."""
    from luna_prep.build import BuildConfig, run_build
    from luna_prep.format.reader import PatchStore

    data = synthesize(tmp_path / "luna16", n_scans=2, seed=4)
    out = tmp_path / "v.zarr"
    run_build(BuildConfig(data_root=str(data.root), out=str(out), subsets=(0, 1), volumes=True), workers=0,
              progress=False)
    store = PatchStore(out)
    model = BrightBlobModel()
    parts = [detect_volume(model, store.read_volume(s.seriesuid),
                           DetectConfig(postprocess=PostprocessConfig(0.5, 20)))[0]
             for s in data.scans]
    submission = pd.concat(parts, ignore_index=True)
    ann = pd.read_csv(data.annotations_csv)
    result = compute_froc(submission, ann, None, [s.seriesuid for s in data.scans], n_bootstrap=10)
    assert result.n_hits == len(ann)


SPEC = PreprocessingSpec(1.0, (-1000.0, 400.0), "uint8", (24,), 24, 24)


def test_predict_writes_masks_in_the_scans_own_geometry(tmp_path):
    data = synthesize(tmp_path / "luna16", n_scans=2, seed=5)
    scan = data.scans[1]  # the flipped direction matrix
    assert not scan.geometry.is_identity_direction
    pred = predict_scan(BrightBlobModel(), scan.path, SPEC, DetectConfig(postprocess=PostprocessConfig(0.5, 20)))
    assert ScanGeometry.from_image(pred.mask) == scan.geometry
    assert pred.mask.GetPixelID() == sitk.sitkUInt8
    mask = sitk.GetArrayFromImage(pred.mask)
    for nod in scan.nodules:  # every nodule centre is segmented, on the scan's own (flipped) grid
        i = np.rint(scan.geometry.world_to_voxel(nod.world_xyz)).astype(int)
        assert mask[i[2], i[1], i[0]] == 1
        found = pred.candidates[["coordX", "coordY", "coordZ"]].to_numpy()
        assert np.min(np.linalg.norm(found - np.asarray(nod.world_xyz), axis=1)) < nod.diameter_mm / 2
    # the mask is post-processed as the candidates are: components below min-size go from both
    big = predict_scan(BrightBlobModel(), scan.path, SPEC, DetectConfig(postprocess=PostprocessConfig(0.5, 10**6)))
    assert sitk.GetArrayViewFromImage(big.probabilities).max() > 0.5
    assert sitk.GetArrayViewFromImage(big.mask).max() == 0 and big.candidates.empty


def test_predict_warns_about_a_scan_smaller_than_the_model_input(tmp_path):
    data = synthesize(tmp_path / "luna16", n_scans=1, seed=5)
    scan = data.scans[0]
    assert predict_scan(BrightBlobModel(), scan.path, SPEC, DetectConfig()).warnings == ()
    small = tmp_path / "small.mhd"
    image = sitk.ReadImage(str(scan.path))
    sitk.WriteImage(image[:, :, :3], str(small))  # 3 slices (at most 7.5 mm): less than the 24 mm input along z
    pred = predict_scan(BrightBlobModel(), small, SPEC, DetectConfig())
    assert len(pred.warnings) == 1 and "small.mhd: the scan covers" in pred.warnings[0]
    assert "less than the model's input of 24 mm" in pred.warnings[0]


class _CountingModel(BrightBlobModel):
    """The stand-in, counting the windows it is given."""

    def __init__(self):
        super().__init__()
        self.windows = 0

    def probabilities(self, x):
        self.windows += x.shape[0]
        return super().probabilities(x)


def test_a_smaller_window_overlap_runs_fewer_windows_and_still_finds_the_balls():
    centres = [(20, 30, 25), (40, 40, 60)]
    volume = _volume_with_balls(centres, shape=(72, 72, 96))
    counts, found = {}, {}
    for overlap in (0.5, 0.25):
        model = _CountingModel()
        prob = volume_probabilities(model, volume.image, DetectConfig(overlap=overlap))
        counts[overlap] = model.windows
        cands = candidates_from_probabilities(prob, volume, DetectConfig())
        found[overlap] = volume.world_to_zyx(cands[["coordX", "coordY", "coordZ"]].to_numpy())
    # 24^3 windows over 72 x 72 x 96: strides 12 (5 x 5 x 7 windows) and 18 (4 x 4 x 5, the last one clamped)
    assert counts == {0.5: 5 * 5 * 7, 0.25: 4 * 4 * 5}
    for overlap, zyx in found.items():
        assert len(zyx) == 2
        for c in centres:
            assert np.min(np.linalg.norm(zyx - np.asarray(c), axis=1)) < 1.0, overlap


def test_component_centroids_and_peaks_match_scipy():
    from scipy import ndimage

    from luna_train.inference.detect import component_centroids_and_peaks

    rng = np.random.default_rng(0)
    prob = ndimage.gaussian_filter(rng.random((30, 40, 50)), 2).astype(np.float32)
    labels, n = ndimage.label(prob > np.quantile(prob, 0.9))
    assert n > 5
    prob[labels == 2] = 0.0  # a component of zero probability: its plain centroid
    centroids, peaks = component_centroids_and_peaks(prob, labels, n)
    index = np.arange(1, n + 1)
    with np.errstate(invalid="ignore"):  # scipy divides component 2's zero mass
        expected = np.asarray(ndimage.center_of_mass(prob, labels, index))
    expected[1] = ndimage.center_of_mass(labels == 2)
    np.testing.assert_allclose(centroids, expected, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(peaks, np.asarray(ndimage.maximum(prob, labels, index)))


class _EchoModel(BrightBlobModel):
    """Probability = the input voxel itself; keeps the windows it is given."""

    def __init__(self, train_size=24, eval_scale=24):
        super().__init__(train_size, eval_scale)
        self.windows = []

    def probabilities(self, x):
        self.windows.append(x.clone())
        return x


def test_a_scan_smaller_than_one_window_is_padded_with_air_not_stretched():
    volume = _volume_with_balls([(7, 20, 20)], radius=5, shape=(14, 40, 40))  # 14 slices, 24-voxel windows
    model = _EchoModel()
    prob = volume_probabilities(model, volume.image, DetectConfig())
    np.testing.assert_allclose(prob, volume.image, atol=1e-6)  # every voxel seen as it is, none interpolated
    windows = torch.cat(model.windows)[:, 0].numpy()
    ball_voxels = int((volume.image > 0.5).sum())
    whole = 0
    for window in windows:  # the 10 slices beyond the scan are air (0); the ball stays round
        assert len(np.flatnonzero(window.max(axis=(1, 2)) > 0)) == 14
        ball = window > 0.5
        if ball.sum() == ball_voxels:
            whole += 1
            assert [np.ptp(np.nonzero(ball)[a]) + 1 for a in range(3)] == [11, 11, 11]
    assert whole > 0


def test_detect_zooms_a_volume_as_training_zooms_its_patches():
    """Model voxels of 2 mm: the model sees every second voxel (training's resize_linear), with the
    texture of its training patches, not a smoothed average of neighbours."""
    from luna_train.data.dataset import resize_linear

    rng = np.random.default_rng(0)
    image = (0.5 + 0.1 * rng.standard_normal((48, 48, 48))).astype(np.float32)
    model = _EchoModel(train_size=24, eval_scale=48)
    prob = volume_probabilities(model, image, DetectConfig())
    assert len(model.windows) == 1  # 48 voxels at 2 mm: one 24^3 window
    seen = model.windows[0]
    torch.testing.assert_close(seen, resize_linear(torch.from_numpy(image)[None, None], 24))
    np.testing.assert_allclose(seen[0, 0].numpy(), image[::2, ::2, ::2], atol=1e-6)
    assert abs(float(seen.std()) - 0.1) < 0.01  # trilinear averaging of 2^3 voxels would give ~0.035
    assert prob.shape == image.shape
    np.testing.assert_allclose(prob[::2, ::2, ::2], image[::2, ::2, ::2], atol=1e-6)  # zoomed back on the same taps


def test_one_26_connected_object_is_one_candidate():
    """Candidates are the components post-processing keeps: 26-connected, so blocks touching along an edge
    are one object (and one candidate), not two."""
    prob = np.zeros((20, 20, 20), np.float32)
    prob[7:9, 7:9, 7:9] = 0.9
    prob[7:9, 9:11, 9:11] = 0.8  # touches the first block along an edge only
    volume = ScanVolume("1.2.3", prob, np.ones(prob.shape, bool), (0.0, 0.0, 0.0), 1.0, {})
    cands = candidates_from_probabilities(prob, volume, DetectConfig(postprocess=PostprocessConfig(0.5, 10)))
    assert len(cands) == 1 and cands["probability"].iloc[0] == pytest.approx(0.9)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mhd"])
def test_predicted_candidates_name_the_scan_without_its_image_suffix(tmp_path, suffix):
    from luna_train.inference.predict_scan import prepare_volume

    data = synthesize(tmp_path / "luna16", n_scans=1, seed=5)
    path = tmp_path / f"1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(data.scans[0].path)), str(path))
    volume = prepare_volume(path, SPEC)[0]
    assert volume.seriesuid == "1.3.6.1.4.1.14519.5.2.1.6279.6001.105756658031515062000744821260"


@pytest.mark.parametrize("slices, warned", [(30, False), (20, True)])
def test_the_size_warning_measures_the_model_input_in_mm(slices, warned):
    """The model's input was taken as input_size x (store voxels per model voxel) mm: on a 2 mm store a 24-voxel
    input spans 48 mm, and a scan 40 mm deep was not warned about."""
    from luna_train.inference.predict_scan import size_warning

    shape = (slices, 33, 33)
    volume = ScanVolume("1.2.3", np.zeros(shape, np.float32), np.ones(shape, bool), (0.0, 0.0, 0.0), 2.0, {})
    text = size_warning("x.mhd", volume, BrightBlobModel(train_size=24, eval_scale=24))
    assert (text is not None) == warned, text
    if warned:
        assert text == ("x.mhd: the scan covers 66 x 66 x 40 mm (x, y, z), less than the model's input of 48 mm "
                        "along some axis; it is padded with air (-1000 HU) there, expect poorer results")


def test_air_is_minus_1000_hu_as_the_store_encodes_it():
    assert air_value((-1000.0, 400.0), "uint8") == 0.0
    assert air_value((-1200.0, 600.0), "uint8") == pytest.approx(28 / 255)  # round(255 * 200 / 1800)
    assert air_value((-1200.0, 600.0), "float16") == pytest.approx(1 / 9, abs=1e-3)


def test_a_small_scan_is_padded_with_air_of_its_window_not_0(tmp_path):
    """With a (-1200, 600) HU window 0 is -1200 HU: the model would see a slab denser-than-air void; the store
    pads with -1000 HU, and so must predict (and detect, whose config takes the store's air alike)."""
    from dataclasses import replace

    scan = synthesize(tmp_path / "luna16", n_scans=1, seed=5).scans[0]
    small = tmp_path / "small.mhd"
    sitk.WriteImage(sitk.ReadImage(str(scan.path))[:, :, :3], str(small))  # 3 slices: z is padded
    model = _EchoModel()
    predict_scan(model, small, replace(SPEC, hu_window=(-1200.0, 600.0)), DetectConfig())
    for window in model.windows:
        for pad in (window[0, 0, 0], window[0, 0, -1]):  # first and last slices: beyond the scan
            np.testing.assert_allclose(pad.numpy(), 28 / 255, atol=1e-6)
