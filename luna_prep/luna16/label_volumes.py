"""Masks that come as volumes on a scan's own grid: nodule label maps and LUNA16's lung segmentations.

``luna-prep synth`` writes ``masks/subset{k}/<seriesuid>.mhd`` (voxel = j + 1 inside the scan's j-th
annotation, in annotations.csv order); LUNA16 ships ``seg-lungs-LUNA16/<seriesuid>.mhd`` (3 and 4:
the lungs, 5: the trachea). Both must share the scan's geometry; a mask on another grid is refused
with both grids named rather than silently misplaced.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.luna16.lidc import LidcNoduleMask
from luna_prep.luna16.reading import ScanReadError, read_scan

LUNA16_LUNG_LABELS = (3, 4)  # seg-lungs-LUNA16: 3 and 4 are the two lungs (5 is the trachea)


def find_mask_file(mask_dir: str | Path, seriesuid: str, subset: int) -> Path | None:
    """``DIR/subset{k}/<uid>.mhd`` or ``DIR/<uid>.mhd``, the first that exists."""
    for path in (Path(mask_dir) / f"subset{subset}" / f"{seriesuid}.mhd", Path(mask_dir) / f"{seriesuid}.mhd"):
        if path.is_file():
            return path
    return None


def read_on_grid(path: str | Path, grid: ScanGeometry) -> sitk.Image:
    """The mask at ``path``, checked to lie on ``grid`` (size exact, spacing/origin to 1e-3 mm, direction 1e-4)."""
    image = read_scan(path)
    geo = ScanGeometry.from_image(image)
    same = (tuple(geo.size) == tuple(grid.size) and np.allclose(geo.spacing, grid.spacing, atol=1e-3)
            and np.allclose(geo.origin, grid.origin, atol=1e-3)
            and np.allclose(geo.direction, grid.direction, atol=1e-4))
    if not same:
        raise ScanReadError(f"{path}: mask grid (size {list(geo.size)}, spacing {list(geo.spacing)}, origin "
                            f"{list(geo.origin)}) differs from its scan's (size {list(grid.size)}, spacing "
                            f"{list(grid.spacing)}, origin {list(grid.origin)})")
    return image


def nodule_label_masks(path: str | Path, original: ScanGeometry,
                       annotation_rows: list[int]) -> dict[int, LidcNoduleMask]:
    """{annotations.csv row: its mask cropped to its bounding box} from a label map where voxel j + 1
    marks ``annotation_rows[j]``; rows whose label is absent are left out (drawn as spheres)."""
    labels = sitk.GetArrayFromImage(read_on_grid(path, original))  # a copy: a view dies with its image
    boxes = ndimage.find_objects(labels.astype(np.int32, copy=False), max_label=len(annotation_rows))
    out = {}
    for j, box in enumerate(boxes):
        if box is None:
            continue
        pad = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, labels.shape))
        lo_xyz = tuple(int(s.start) for s in pad[::-1])
        out[annotation_rows[j]] = LidcNoduleMask(annotation_rows[j], lo_xyz, labels[pad] == j + 1,
                                                 n_readers=0, distance_mm=0.0)
    return out


def lung_volume_on(path: str | Path, original: ScanGeometry, grid: ScanGeometry) -> np.ndarray:
    """A LUNA16 lung segmentation resampled (nearest neighbour) onto the isotropic ``grid``, (z, y, x) bool.
    Labels 3 and 4 are the lungs; a mask without them counts every non-zero voxel."""
    image = read_on_grid(path, original)
    values = sitk.GetArrayViewFromImage(image)
    lungs = np.isin(values, LUNA16_LUNG_LABELS)
    if not lungs.any():
        lungs = values > 0
    binary = sitk.GetImageFromArray(lungs.astype(np.uint8))
    binary.CopyInformation(image)
    out = sitk.Resample(binary, [int(v) for v in grid.size], sitk.Transform(), sitk.sitkNearestNeighbor,
                        grid.origin, grid.spacing, grid.direction, 0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(out) > 0
