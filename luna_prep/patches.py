"""Cutting cubic patches out of a volume and drawing nodule masks into them."""

from __future__ import annotations

import numpy as np

from .sampling import Nodule


def patch_bounds(centre_zyx, size: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last voxel (z, y, x) of the patch whose voxel [s//2]*3 is ``centre_zyx``."""
    lo = np.asarray(centre_zyx, dtype=int) - size // 2
    return lo, lo + size


def extract_patch(volume: np.ndarray, centre_zyx, size: int, pad_value: float = 0.0) -> np.ndarray:
    """The ``size``^3 patch around ``centre_zyx``; voxels beyond the volume's edge are ``pad_value``."""
    lo, hi = patch_bounds(centre_zyx, size)
    shape = np.asarray(volume.shape)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, shape)
    out = np.full((size, size, size), pad_value, dtype=volume.dtype)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - lo
    dst_hi = dst_lo + (src_hi - src_lo)
    out[dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = volume[
        src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]
    ]
    return out


def sphere_mask(centre_zyx, size: int, nodules: list[Nodule]) -> np.ndarray:
    """uint8 mask of the patch: the union of every nodule sphere that reaches into it.

    A voxel belongs to a nodule when its centre lies within the nodule's radius of the
    nodule's (continuous) centre.
    """
    lo, _ = patch_bounds(centre_zyx, size)
    mask = np.zeros((size, size, size), dtype=bool)
    axis = np.arange(size, dtype=np.float64)
    for nod in nodules:
        rel = nod.centre_zyx - lo  # nodule centre in patch coordinates
        r = nod.radius_vox
        if np.any(rel + r < 0) or np.any(rel - r > size - 1):
            continue
        dz2 = (axis - rel[0])[:, None, None] ** 2
        dy2 = (axis - rel[1])[None, :, None] ** 2
        dx2 = (axis - rel[2])[None, None, :] ** 2
        mask |= (dz2 + dy2 + dx2) <= r * r
    return mask.astype(np.uint8)
