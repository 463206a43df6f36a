"""Masks that come as volumes on a scan's own grid: nodule label maps and LUNA16's lung segmentations.

``luna-prep synth`` writes ``masks/subset{k}/<seriesuid>.mhd`` (one label value per nodule: j + 1 inside the
scan's j-th annotation); each label's region is matched to an annotation by centroid distance, as LIDC
contours are, so a filtered or reordered annotations.csv keeps every region on its nodule. LUNA16 ships
``seg-lungs-LUNA16/<seriesuid>.mhd`` (3 and 4:
the lungs, 5: the trachea). Both must share the scan's geometry; a mask on another grid is refused
with both grids named rather than silently misplaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.luna16.lidc import LidcNoduleMask, match_to_annotations
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
                            f"{list(geo.origin)}, direction {list(geo.direction)}) differs from its scan's (size "
                            f"{list(grid.size)}, spacing {list(grid.spacing)}, origin {list(grid.origin)}, direction "
                            f"{list(grid.direction)})")
    return image


def nodule_label_masks(path: str | Path, original: ScanGeometry,
                       annotations: Sequence[tuple[int, float, float, float, float]]) -> dict[int, LidcNoduleMask]:
    """{annotations.csv row: its mask cropped to its bounding box} from a label map with one positive value per
    nodule; ``annotations`` are (row, x, y, z mm, diameter_mm). Each label's region goes to the annotation its
    centroid lies nearest (within max(diameter / 2, 5 mm), one-to-one); rows left without a region are left
    out (drawn as spheres), regions without an annotation are ignored."""
    labels = sitk.GetArrayFromImage(read_on_grid(path, original))  # a copy: a view dies with its image
    if labels.min() < 0 or not np.array_equal(labels, np.round(labels)):
        raise ScanReadError(f"{path}: a nodule label volume holds whole numbers >= 0 (one per nodule), not "
                            f"{labels.dtype} values from {labels.min()} to {labels.max()}")
    labels = labels.astype(np.int32, copy=False)
    boxes = ndimage.find_objects(labels)
    regions = []
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        pad = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, labels.shape))
        lo_xyz = tuple(int(s.start) for s in pad[::-1])
        mask = labels[pad] == value
        regions.append((lo_xyz, mask, original.voxel_to_world(np.argwhere(mask).mean(axis=0)[::-1] + lo_xyz)))
    out = {}
    for row, n, distance in match_to_annotations(annotations, [c for _, _, c in regions]):
        lo_xyz, mask, _ = regions[n]
        out[row] = LidcNoduleMask(row, lo_xyz, mask, n_readers=0, distance_mm=distance)
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
