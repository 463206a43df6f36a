"""A coarse lung mask: air-like regions enclosed by the body, computed on a subsampled grid.

Gas in the stomach and colon is air enclosed by the body too; it differs from lung by being nearly
pure air (about -1000 HU) where lung parenchyma is about -850 HU with vessels. Its cores (where the
local mean is under ``GAS_MAX_HU``) are cut out before the air is split into components, which
severs gas touching a lung base through a thin diaphragm; components that are mostly dark or lie
mostly within 3 voxels of a core (the rim the cut leaves) go too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LUNG_MAX_HU = -400.0
GAS_MAX_HU = -950.0  # darker than lung parenchyma: bowel gas (also the cores of large bullae)
MIN_LUNG_ML = 10.0  # a lung component holds at least this much, and 5% of the largest one


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


def _level(hu: float, hu_window: tuple[float, float], full_scale: float) -> float:
    lo, hi = hu_window
    return full_scale * (hu - lo) / (hi - lo)


def _gas(coarse: np.ndarray, air: np.ndarray, gas_level: float) -> tuple[np.ndarray, np.ndarray]:
    """(gas cores and one voxel around them, voxels within 3 voxels of a core): cores are air voxels
    whose 3x3x3 mean is under ``gas_level``."""
    core = air & (ndimage.uniform_filter(coarse.astype(np.float32), size=3, mode="nearest") < gas_level)
    cube = np.ones((3, 3, 3), bool)
    cut = ndimage.binary_dilation(core, structure=cube)
    return cut, ndimage.binary_dilation(cut, structure=cube, iterations=2)


def coarse_lungs(full: np.ndarray, spacing_mm: float, grid_mm: float = 4.0) -> CoarseMask:
    """A full-resolution lung mask (e.g. LUNA16's own segmentation) on the same lattice as :func:`lung_mask`."""
    stride = max(1, int(round(grid_mm / spacing_mm)))
    return CoarseMask(np.ascontiguousarray(full[::stride, ::stride, ::stride]), stride)


def lung_mask(volume: np.ndarray, spacing_mm: float, hu_window: tuple[float, float], grid_mm: float = 4.0,
              full_scale: float = 1.0) -> CoarseMask:
    """Lungs of a normalized (z, y, x) volume on a ``grid_mm`` lattice.

    ``volume`` holds intensities in [0, ``full_scale``]: 1 for [0, 1] floats, 255 for uint8.

    Air-like voxels (< -400 HU) form components; those touching the in-plane border are the air
    around the body (and the scanner's field of view) and are dropped. Gas (see the module
    docstring; only when the window reaches below -950 HU) is cut out. Of the rest, components of
    at least 10 ml and 5% of the largest one are kept, then closed and hole-filled so that vessels
    and nodules inside the lungs belong to the mask. The lungs reach the first and last slice, so
    the z faces do not count as border.
    """
    stride = max(1, int(round(grid_mm / spacing_mm)))
    coarse = volume[::stride, ::stride, ::stride]
    air = coarse < _level(LUNG_MAX_HU, hu_window, full_scale)
    gas_level = _level(GAS_MAX_HU, hu_window, full_scale) if hu_window[0] < GAS_MAX_HU - 10 else None
    if gas_level is not None:
        cut, near_gas = _gas(coarse, air, gas_level)
        air &= ~cut
    labels, n = ndimage.label(air)
    if n == 0:
        return CoarseMask(np.zeros_like(air), stride)
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    if gas_level is not None:  # mostly dark or hugging a gas core: what the cut left of a gas pocket
        gassy = ((coarse < gas_level) | near_gas).ravel()
        sizes[np.bincount(labels.ravel(), weights=gassy, minlength=n + 1) >= 0.5 * np.maximum(sizes, 1)] = 0
    sizes[0] = 0
    sizes[border] = 0
    if sizes.max() == 0:
        return CoarseMask(np.zeros_like(air), stride)
    keep = (sizes >= 0.05 * sizes.max()) & (sizes * (stride * spacing_mm) ** 3 >= 1000.0 * MIN_LUNG_ML)
    keep[0] = False
    lungs = keep[labels]
    lungs = close_by_cube(lungs) | lungs
    return CoarseMask(fill_holes_per_slice(lungs), stride)


def close_by_cube(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    """``ndimage.binary_closing`` with a 3x3x3 cube, ``iterations`` times, ``border_value=0``: as separable
    max and min filters of width 2 * iterations + 1 (zero outside), 5x faster on a scan's coarse lattice."""
    width = 2 * iterations + 1
    grown = ndimage.maximum_filter(mask.view(np.uint8), size=width, mode="constant", cval=0)
    return ndimage.minimum_filter(grown, size=width, mode="constant", cval=0).astype(bool)


def fill_holes_per_slice(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` of every z slice, at once: a hole is a background component of its
    slice (4-connected in-plane, as binary_fill_holes' default) that does not touch the slice's edge.
    One labelling of the volume instead of an iterated dilation per slice (0.24 s -> 0.02 s a scan)."""
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    labels, n = ndimage.label(~mask, structure=in_plane)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, bool)
    outside[0] = True
    for edge in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        outside[edge] = True
    return mask | ~outside[labels]  # label 0 is the mask itself: outside, so never a hole
