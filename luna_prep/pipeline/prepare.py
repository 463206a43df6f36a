"""A raw scan as every model sees it: read -> resample -> encode -> lung mask.

The build (:mod:`~luna_prep.pipeline.scan_task`) cuts its training patches out of
:func:`prepare_scan`'s volume, and ``luna-train predict`` runs the model on the same function's
output, so a model never sees at inference anything but what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luna_prep.format.spec import full_scale
from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.luna16.label_volumes import lung_volume_on
from luna_prep.luna16.reading import intensity_warnings, read_scan
from luna_prep.pipeline.lungmask import CoarseMask, coarse_lungs, lung_mask
from luna_prep.pipeline.resampling import ResampledVolume, resample_encoded


@dataclass(frozen=True)
class PreparedScan:
    """One scan resampled to the store's grid, its intensities encoded as the store holds them."""

    original: ScanGeometry  # the source scan's own grid (direction, anisotropic spacing)
    volume: ResampledVolume  # (z, y, x) in image_dtype on an isotropic identity-direction grid
    lungs: CoarseMask  # on every ``lungs.stride``-th voxel of ``volume``
    image_dtype: str
    warnings: tuple[str, ...] = ()  # values that do not look like HU (see reading.intensity_warnings)

    def lungs_full(self) -> np.ndarray:
        """The lung mask at the volume's full resolution, (z, y, x) bool."""
        return self.lungs.upsample(self.volume.array.shape)


def prepare_scan(path: str | Path, spacing_mm: float, hu_window: tuple[float, float],
                 image_dtype: str, lung_mask_path: str | Path | None = None) -> PreparedScan:
    """Read the scan at ``path``, resample it to ``spacing_mm``, window and encode it, find its lungs
    (or take them from ``lung_mask_path``, a segmentation on the scan's grid such as LUNA16's
    ``seg-lungs-LUNA16/<seriesuid>.mhd``).

    Raises :class:`~luna_prep.luna16.reading.ScanReadError` for a scan that cannot be read.
    """
    image = read_scan(path)
    original = ScanGeometry.from_image(image)
    warnings = tuple(intensity_warnings(image, path, hu_window))
    vol = resample_encoded(image, spacing_mm, hu_window, image_dtype)  # no whole float volume, no copy of one
    del image
    if lung_mask_path is not None:
        lungs = coarse_lungs(lung_volume_on(lung_mask_path, original, vol.geometry), vol.spacing)
    else:
        lungs = lung_mask(vol.array, vol.spacing, hu_window, full_scale=full_scale(image_dtype))
    return PreparedScan(original, vol, lungs, image_dtype, warnings)
