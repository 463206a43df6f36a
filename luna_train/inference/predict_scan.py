"""Segmentation and candidates for one raw scan (.mhd), returned in the scan's own geometry.

Needs only the model and its :class:`~luna_train.run_dir.PreprocessingSpec`: the scan is prepared as
the build prepared the training scans, and no patch store is opened.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from luna_prep.format.reader import ScanVolume
from luna_prep.format.spec import decode_image
from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.pipeline.prepare import prepare_scan
from luna_train.inference.detect import DetectConfig, air_value, candidate_mask, detect_volume
from luna_train.inference.outputs import stem_of
from luna_train.inference.trained_model import ProbabilityModel
from luna_train.run_dir import PreprocessingSpec


@dataclass
class ScanPrediction:
    candidates: pd.DataFrame  # LUNA16 submission rows (world mm)
    probabilities: sitk.Image  # float32 on the scan's own grid
    mask: sitk.Image  # uint8 0/1 on the scan's own grid: the post-processed voxels the candidates are made of
    warnings: tuple[str, ...] = ()  # values that do not look like HU, a scan smaller than the model's input


def prepare_volume(path: str | Path, spec: PreprocessingSpec) -> tuple[ScanVolume, ScanGeometry, tuple[str, ...]]:
    """The scan as the build prepares it (:func:`~luna_prep.pipeline.prepare.prepare_scan`), decoded
    to [0, 1] as the training patches are; the scan's own geometry; and the preparation's warnings."""
    prepared = prepare_scan(path, spec.spacing_mm, spec.hu_window, spec.image_dtype)
    vol = prepared.volume
    volume = ScanVolume(
        seriesuid=stem_of(path).name, image=decode_image(vol.array, spec.image_dtype), lungs=prepared.lungs_full(),
        origin_xyz=tuple(vol.geometry.origin), spacing_mm=vol.spacing, original=prepared.original.to_dict(),
    )
    return volume, prepared.original, prepared.warnings


def size_warning(path: str | Path, volume: ScanVolume, model: ProbabilityModel) -> str | None:
    """A warning when the scan is smaller than one model input along some axis (padded with air there)."""
    # model.voxel_mm is store voxels per model voxel; a store voxel is spacing_mm
    roi_mm = (model.input_size or model.config.data.eval_scale) * model.voxel_mm * volume.spacing_mm
    extent = np.asarray(volume.image.shape) * volume.spacing_mm
    if np.all(extent >= roi_mm):
        return None
    return (f"{path}: the scan covers {' x '.join(f'{v:.0f}' for v in extent[::-1])} mm (x, y, z), less than the "
            f"model's input of {roi_mm:.0f} mm along some axis; it is padded with air (-1000 HU) there, expect poorer "
            "results")


def to_scan_grid(values: np.ndarray, volume: ScanVolume, grid: ScanGeometry, label: bool = False) -> sitk.Image:
    """A (z, y, x) map on the resampled grid, resampled onto the scan's own ``grid``: linearly as float32,
    or with ``label`` by nearest neighbour as uint8."""
    img = sitk.GetImageFromArray(values.astype(np.uint8 if label else np.float32))
    img.SetOrigin(tuple(float(v) for v in volume.origin_xyz))
    img.SetSpacing((float(volume.spacing_mm),) * 3)
    interp, pixel = (sitk.sitkNearestNeighbor, sitk.sitkUInt8) if label else (sitk.sitkLinear, sitk.sitkFloat32)
    return sitk.Resample(img, [int(v) for v in grid.size], sitk.Transform(), interp, grid.origin,
                         grid.spacing, grid.direction, 0, pixel)


def predict_scan(model: ProbabilityModel, path: str | Path, spec: PreprocessingSpec,
                 cfg: DetectConfig) -> ScanPrediction:
    """Probabilities, post-processed mask (lungs and size filtered, as the candidates) and candidates of one scan."""
    volume, original, warnings = prepare_volume(path, spec)
    small = size_warning(path, volume, model)
    candidates, prob = detect_volume(model, volume, replace(cfg, air=air_value(spec.hu_window, spec.image_dtype)))
    mask = candidate_mask(prob, volume, cfg)
    return ScanPrediction(candidates, to_scan_grid(prob, volume, original), to_scan_grid(mask, volume, original, True),
                          warnings + ((small,) if small else ()))
