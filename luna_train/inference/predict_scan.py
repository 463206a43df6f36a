"""Segmentation and candidates for one raw scan (.mhd), returned in the scan's own geometry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from luna_prep.format.reader import ScanVolume
from luna_prep.format.spec import decode_image
from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.pipeline.prepare import prepare_scan
from luna_train.evaluation.metrics import binarize
from luna_train.inference.detect import DetectConfig, detect_volume
from luna_train.inference.trained_model import ProbabilityModel


@dataclass
class ScanPrediction:
    candidates: pd.DataFrame  # LUNA16 submission rows (world mm)
    probabilities: sitk.Image  # float32 on the scan's own grid
    mask: sitk.Image  # uint8 0/1 on the scan's own grid (probabilities >= threshold)


def prepare_volume(path: str | Path, spacing_mm: float, hu_window: tuple[float, float],
                   image_dtype: str) -> tuple[ScanVolume, ScanGeometry]:
    """The scan as the build prepares it (:func:`~luna_prep.pipeline.prepare.prepare_scan`), decoded
    to [0, 1] as the training patches are; and the scan's own geometry."""
    prepared = prepare_scan(path, spacing_mm, hu_window, image_dtype)
    vol = prepared.volume
    volume = ScanVolume(
        seriesuid=Path(path).stem, image=decode_image(vol.array, image_dtype), lungs=prepared.lungs_full(),
        origin_xyz=tuple(vol.geometry.origin), spacing_mm=vol.spacing, original=prepared.original.to_dict(),
    )
    return volume, prepared.original


def to_scan_grid(values: np.ndarray, volume: ScanVolume, grid: ScanGeometry) -> sitk.Image:
    """A (z, y, x) map on the resampled grid, resampled linearly onto the scan's own ``grid``."""
    img = sitk.GetImageFromArray(values.astype(np.float32))
    img.SetOrigin(tuple(float(v) for v in volume.origin_xyz))
    img.SetSpacing((float(volume.spacing_mm),) * 3)
    return sitk.Resample(img, [int(v) for v in grid.size], sitk.Transform(), sitk.sitkLinear, grid.origin,
                         grid.spacing, grid.direction, 0.0, sitk.sitkFloat32)


def predict_scan(model: ProbabilityModel, path: str | Path, spacing_mm: float, hu_window: tuple[float, float],
                 image_dtype: str, cfg: DetectConfig) -> ScanPrediction:
    volume, original = prepare_volume(path, spacing_mm, hu_window, image_dtype)
    candidates, prob = detect_volume(model, volume, cfg)
    prob_img = to_scan_grid(prob, volume, original)
    mask = sitk.GetImageFromArray(binarize(sitk.GetArrayViewFromImage(prob_img), cfg.postprocess.threshold)
                                  .astype(np.uint8))
    mask.CopyInformation(prob_img)
    return ScanPrediction(candidates, prob_img, mask)
