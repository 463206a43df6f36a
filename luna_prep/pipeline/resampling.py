"""Resampling a scan to isotropic spacing in identity orientation, and HU normalization."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from luna_prep.format.spec import full_scale
from luna_prep.luna16.geometry import ScanGeometry

AIR_HU = -1000.0


@dataclass(frozen=True)
class ResampledVolume:
    """A (z, y, x) float32 volume on an isotropic, identity-direction grid."""

    array: np.ndarray
    geometry: ScanGeometry  # identity direction, isotropic spacing, size in (x, y, z)

    @property
    def spacing(self) -> float:
        return self.geometry.spacing[0]

    def world_to_zyx(self, world_xyz) -> np.ndarray:
        """Continuous (z, y, x) array index of world points (..., 3)."""
        return self.geometry.world_to_voxel(world_xyz)[..., ::-1]

    def zyx_to_world(self, zyx) -> np.ndarray:
        return self.geometry.voxel_to_world(np.asarray(zyx, dtype=np.float64)[..., ::-1])


def isotropic_grid(geometry: ScanGeometry, spacing: float) -> ScanGeometry:
    """The identity-direction grid of ``spacing`` mm covering a scan's voxel centres.

    Array axes of the result run along world x, y, z in increasing order whatever the
    scan's direction matrix, so patches of every scan share one orientation.
    """
    lo, hi = geometry.world_bounds()
    size = np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1
    return ScanGeometry(
        origin=tuple(float(v) for v in lo),
        spacing=(float(spacing),) * 3,
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        size=tuple(int(v) for v in size),
    )


def resample_isotropic(image: sitk.Image, spacing: float, fill_hu: float = AIR_HU) -> ResampledVolume:
    """Linearly resample ``image`` (HU) onto :func:`isotropic_grid`; outside the scan is ``fill_hu``."""
    out, grid = resample_image(image, spacing, fill_hu)
    return ResampledVolume(array=sitk.GetArrayFromImage(out), geometry=grid)


def resample_image(image: sitk.Image, spacing: float, fill_hu: float = AIR_HU) -> tuple[sitk.Image, ScanGeometry]:
    """:func:`resample_isotropic` as a float32 SimpleITK image and its grid, for callers that read it
    through ``sitk.GetArrayViewFromImage`` (no copy; the image must outlive the view)."""
    grid = isotropic_grid(ScanGeometry.from_image(image), spacing)
    return _resampler(grid, fill_hu).Execute(image), grid


def resample_encoded(image: sitk.Image, spacing: float, hu_window: tuple[float, float], image_dtype: str,
                     slab: int = 32, fill_hu: float = AIR_HU) -> ResampledVolume:
    """:func:`resample_isotropic` then :func:`encode_hu`, ``slab`` output slices at a time: the float
    volume never exists whole (0.34 GB for a 753x335x335 grid), and each slab is encoded from
    SimpleITK's buffer while it is fresh. The values are the whole-volume path's (tested); on the
    development VM a scan took 2.4-2.8 s instead of 2.9-3.0 s, and a worker's peak memory fell."""
    grid = isotropic_grid(ScanGeometry.from_image(image), spacing)
    nx, ny, nz = (int(v) for v in grid.size)
    resampler = _resampler(grid, fill_hu)
    out = np.empty((nz, ny, nx), dtype=np.dtype(image_dtype))
    for z in range(0, nz, slab):
        depth = min(slab, nz - z)
        resampler.SetOutputOrigin((grid.origin[0], grid.origin[1], grid.origin[2] + z * grid.spacing[2]))
        resampler.SetSize([nx, ny, depth])
        part = resampler.Execute(image)  # kept alive while its view is read
        out[z:z + depth] = encode_hu(sitk.GetArrayViewFromImage(part), hu_window, image_dtype)
    return ResampledVolume(out, grid)


def _resampler(grid: ScanGeometry, fill_hu: float) -> sitk.ResampleImageFilter:
    """Linear resampling onto ``grid`` (float32 output; outside the scan ``fill_hu``)."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputOrigin(grid.origin)
    resampler.SetOutputSpacing(grid.spacing)
    resampler.SetOutputDirection(grid.direction)
    resampler.SetSize([int(v) for v in grid.size])
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(float(fill_hu))
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return resampler


def encode_hu(hu: np.ndarray, window: tuple[float, float], image_dtype: str, slab: int = 16) -> np.ndarray:
    """HU clipped to ``window``, scaled to [0, 1] and encoded as the store's ``image_dtype``.

    Stored values are those of :func:`luna_prep.format.spec.encode_image`. Works slab by slab so
    temporaries stay in cache: about 9x faster than whole-volume numpy passes on a 512x512x300 scan.
    """
    lo, hi = float(window[0]), float(window[1])
    if hi <= lo:
        raise ValueError(f"bad HU window {window}: high must exceed low")
    top = full_scale(image_dtype)
    scale, offset = np.float32(top / (hi - lo)), np.float32(-lo * top / (hi - lo))
    out = np.empty(hu.shape, dtype=np.dtype(image_dtype))
    tmp = np.empty((slab,) + hu.shape[1:], np.float32)
    for z in range(0, hu.shape[0], slab):
        src = hu[z:z + slab]
        t = tmp[: len(src)]
        np.multiply(src, scale, out=t)
        t += offset
        np.clip(t, 0.0, top, out=t)
        if image_dtype == "uint8":
            np.rint(t, out=t)
        out[z:z + slab] = t
    return out
