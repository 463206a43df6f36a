"""A coarse lung mask: air-like regions enclosed by the body, computed on a subsampled grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LUNG_MAX_HU = -400.0


@dataclass(frozen=True)
class CoarseMask:
    """A boolean mask on every ``stride``-th voxel of a volume, in (z, y, x)."""

    mask: np.ndarray
    stride: int

    def upsample(self, shape_zyx: tuple[int, int, int]) -> np.ndarray:
        """Nearest-neighbour mask at full resolution: voxel i takes coarse voxel round(i / stride)."""
        idx = [np.minimum(np.rint(np.arange(n) / self.stride).astype(int), m - 1)
               for n, m in zip(shape_zyx, self.mask.shape)]
        return self.mask[np.ix_(*idx)]

    def voxels(self) -> np.ndarray:
        """(n, 3) full-resolution (z, y, x) indices of the coarse mask's voxels."""
        return np.argwhere(self.mask) * self.stride

    def cell_offsets(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Random offsets within the cell a coarse voxel stands for (centred on it)."""
        return rng.integers(0, self.stride, size=(n, 3)) - self.stride // 2


def lung_mask(volume: np.ndarray, spacing_mm: float, hu_window: tuple[float, float], grid_mm: float = 4.0,
              full_scale: float = 1.0) -> CoarseMask:
    """Lungs of a normalized (z, y, x) volume on a ``grid_mm`` lattice.

    ``volume`` holds intensities in [0, ``full_scale``]: 1 for [0, 1] floats, 255 for uint8.

    Air-like voxels (< -400 HU) form components; those touching the in-plane border are the air
    around the body (and the scanner's field of view) and are dropped. Of the rest, components of at
    least 5% of the largest one are kept, then closed and hole-filled so that vessels and nodules
    inside the lungs belong to the mask. The lungs reach the first and last slice, so the z faces
    do not count as border.
    """
    stride = max(1, int(round(grid_mm / spacing_mm)))
    coarse = volume[::stride, ::stride, ::stride]
    lo, hi = hu_window
    air = coarse < full_scale * (LUNG_MAX_HU - lo) / (hi - lo)
    labels, n = ndimage.label(air)
    if n == 0:
        return CoarseMask(np.zeros_like(air), stride)
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    sizes[border] = 0
    if sizes.max() == 0:
        return CoarseMask(np.zeros_like(air), stride)
    keep = sizes >= 0.05 * sizes.max()
    keep[0] = False
    lungs = keep[labels]
    lungs = ndimage.binary_closing(lungs, structure=np.ones((3, 3, 3), bool), iterations=2, border_value=0) | lungs
    for z in range(lungs.shape[0]):
        lungs[z] = ndimage.binary_fill_holes(lungs[z])
    return CoarseMask(lungs, stride)
