"""A scan's annotated nodules on the resampled grid: spheres from diameter_mm, or LIDC contours."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from luna_prep.errors import LunaError
from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.luna16.lidc import LidcNoduleMask
from luna_prep.pipeline.resampling import ResampledVolume
from luna_prep.pipeline.sampling import Nodule

Annotation = tuple[int, float, float, float, float]  # (annotations.csv row, x, y, z mm, diameter_mm)


class AnnotationOutsideVolume(LunaError, ValueError):
    pass


def sphere_nodules(annotations: tuple[Annotation, ...], original: ScanGeometry, vol: ResampledVolume,
                   where: str) -> list[Nodule]:
    """Spheres of ``diameter_mm`` at the annotated world centres; an annotation outside the scan raises."""
    out = []
    for row, x, y, z, d in annotations:
        vox = original.world_to_voxel([x, y, z])
        if not original.contains_voxel(vox):
            raise AnnotationOutsideVolume(
                f"{where}: annotation_index {row} (0: the first nodule) at world ({x:.2f}, {y:.2f}, {z:.2f}) mm lies "
                f"outside the volume (voxel {np.round(vox, 1).tolist()}, size {list(original.size)})"
            )
        out.append(Nodule(row, vol.world_to_zyx([x, y, z]), d / 2.0 / vol.spacing, d))
    return out


def resample_mask(m: LidcNoduleMask, original: ScanGeometry, grid: ScanGeometry) -> tuple[np.ndarray, np.ndarray]:
    """A consensus mask on the original grid -> (lo_zyx, bool mask) on the isotropic grid.

    Linear interpolation of the 0/1 mask, kept where >= 0.5 (the usual partial-volume rule).
    """
    crop = sitk.GetImageFromArray(m.mask.astype(np.float32))
    crop.SetSpacing(original.spacing)
    crop.SetDirection(original.direction)
    crop.SetOrigin(tuple(float(v) for v in original.voxel_to_world(m.lo_xyz)))
    lo_w, hi_w = ScanGeometry.from_image(crop).world_bounds()
    sp = grid.spacing[0]
    lo = np.floor((lo_w - np.asarray(grid.origin)) / sp).astype(int) - 1
    hi = np.ceil((hi_w - np.asarray(grid.origin)) / sp).astype(int) + 1
    out = sitk.Resample(crop, [int(v) for v in hi - lo + 1], sitk.Transform(), sitk.sitkLinear,
                        tuple(float(v) for v in np.asarray(grid.origin) + lo * sp), grid.spacing, grid.direction, 0.0,
                        sitk.sitkFloat32)
    return lo[::-1].copy(), sitk.GetArrayFromImage(out) >= 0.5


def with_lidc_masks(nodules: list[Nodule], masks: dict[int, LidcNoduleMask], original: ScanGeometry,
                    grid: ScanGeometry, kind: str = "lidc") -> list[Nodule]:
    """``nodules`` with each one that has a mask on the original grid (a readers' consensus, or a
    label volume's region: ``kind``) drawn from it instead of a sphere."""
    out = []
    for nod in nodules:
        m = masks.get(nod.annotation_index)
        if m is None:
            out.append(nod)
            continue
        lo_zyx, mask = resample_mask(m, original, grid)
        voxels = np.argwhere(mask) + lo_zyx
        reach = float(np.linalg.norm(voxels - nod.centre_zyx, axis=1).max()) + 0.5 if len(voxels) else nod.radius_vox
        out.append(Nodule(nod.annotation_index, nod.centre_zyx, reach, nod.diameter_mm, mask, lo_zyx, kind))
    return out
