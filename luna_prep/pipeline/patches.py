"""Cutting cubic patches out of a volume and drawing nodule masks into them."""

from __future__ import annotations

import numpy as np

from luna_prep.pipeline.sampling import Nodule


def patch_bounds(centre_zyx, size: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last voxel (z, y, x) of the patch whose voxel [s//2]*3 is ``centre_zyx``."""
    lo = np.asarray(centre_zyx, dtype=int) - size // 2
    return lo, lo + size


def extract_patch(volume: np.ndarray, centre_zyx, size: int, pad_value: float = 0.0,
                  out: np.ndarray | None = None) -> np.ndarray:
    """The ``size``^3 patch around ``centre_zyx``; voxels beyond the volume's edge are ``pad_value``.
    With ``out`` (``size``^3, the volume's dtype), written there."""
    lo, hi = patch_bounds(centre_zyx, size)
    shape = np.asarray(volume.shape)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, shape)
    if out is None:
        out = np.empty((size, size, size), dtype=volume.dtype)
    if np.any(src_lo != lo) or np.any(src_hi != hi):  # reaches beyond the volume: padded
        out.fill(pad_value)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - lo
    dst_hi = dst_lo + (src_hi - src_lo)
    out[dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = volume[
        src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]
    ]
    return out


def nodule_mask(centre_zyx, size: int, nodules: list[Nodule],
                out: np.ndarray | None = None) -> tuple[np.ndarray, set[str]]:
    """uint8 mask of the patch: the union of every nodule that reaches into it (written into ``out`` when
    given, ``size``^3 uint8), and their sources.

    A sphere nodule covers the voxels whose centres lie within its radius of its (continuous)
    centre; a nodule with its own ``mask`` (LIDC readers' consensus) covers exactly that mask.
    """
    lo, _ = patch_bounds(centre_zyx, size)
    mask = np.zeros((size, size, size), dtype=bool)
    sources: set[str] = set()
    axis = np.arange(size, dtype=np.float64)
    for nod in nodules:
        if nod.mask is not None:
            if _paste(mask, nod.mask, np.asarray(nod.mask_lo_zyx) - lo):
                sources.add(nod.source)
            continue
        rel = nod.centre_zyx - lo  # nodule centre in patch coordinates
        r = nod.radius_vox
        if np.any(rel + r < 0) or np.any(rel - r > size - 1):
            continue
        # only the ball's bounding box: a voxel outside it is beyond r along one axis already
        b_lo = np.clip(np.floor(rel - r).astype(int), 0, size)
        b_hi = np.clip(np.ceil(rel + r).astype(int) + 1, 0, size)
        dz2 = (axis[b_lo[0]:b_hi[0]] - rel[0])[:, None, None] ** 2
        dy2 = (axis[b_lo[1]:b_hi[1]] - rel[1])[None, :, None] ** 2
        dx2 = (axis[b_lo[2]:b_hi[2]] - rel[2])[None, None, :] ** 2
        ball = (dz2 + dy2 + dx2) <= r * r
        if ball.any():
            mask[b_lo[0]:b_hi[0], b_lo[1]:b_hi[1], b_lo[2]:b_hi[2]] |= ball
            sources.add(nod.source)
    if out is None:
        return mask.astype(np.uint8), sources
    np.copyto(out, mask)
    return out, sources


def _paste(target: np.ndarray, src: np.ndarray, offset_zyx: np.ndarray) -> bool:
    """OR ``src`` into ``target`` at ``offset`` (clipped); whether any voxel of ``src`` landed."""
    t_lo = np.maximum(offset_zyx, 0)
    t_hi = np.minimum(offset_zyx + np.asarray(src.shape), np.asarray(target.shape))
    if np.any(t_hi <= t_lo):
        return False
    s_lo = t_lo - offset_zyx
    s_hi = s_lo + (t_hi - t_lo)
    part = src[s_lo[0]:s_hi[0], s_lo[1]:s_hi[1], s_lo[2]:s_hi[2]]
    target[t_lo[0]:t_hi[0], t_lo[1]:t_hi[1], t_lo[2]:t_hi[2]] |= part
    return bool(part.any())
