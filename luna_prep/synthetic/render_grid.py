"""World coordinates of index boxes and tapered-tube pieces, for the ``luna`` renderer.

Every voxel's world position is origin + D @ (spacing * index). With a diagonal direction matrix
(every scan ``synth`` writes) the world coordinates of a box are three 1-D arrays sliced from
per-axis tables, broadcastable to (z, y, x); otherwise ``anatomy.world_coords`` computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.synthetic.anatomy import world_coords
from luna_prep.synthetic.trees import TaperedTube

EDGE_MM = 0.8  # in-plane width of every edge's ramp
PIECE_MM = 8.0  # tubes are drawn in pieces of at most this length (small boxes)
_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=np.float64)


def edge_fn(slice_mm: float) -> Callable:
    """Ramp width at a voxel offset dz (along z) from a shape, ``dist`` from it: EDGE_MM in-plane,
    up to the slice spacing along z (partial volume across thick slices)."""
    pv = max(0.0, slice_mm - EDGE_MM)
    return lambda dz, dist: EDGE_MM + pv * np.abs(dz) / dist


class Grid:
    """Index boxes and their world coordinates (float32) on one scan's grid."""

    def __init__(self, geom: ScanGeometry):
        self.geom = geom
        m = geom.direction_matrix * np.asarray(geom.spacing)[None, :]
        self.inverse = np.linalg.inv(m)
        self.axes = None
        if np.count_nonzero(geom.direction_matrix - np.diag(np.diag(geom.direction_matrix))) == 0:
            self.axes = tuple((geom.origin[c] + m[c, c] * np.arange(geom.size[c], dtype=np.float64))
                              .astype(np.float32) for c in range(3))

    def coords(self, lo, hi):
        if self.axes is None:
            return world_coords(self.geom, lo, hi)
        ax, ay, az = self.axes
        return ax[lo[0]:hi[0]][None, None, :], ay[lo[1]:hi[1]][None, :, None], az[lo[2]:hi[2]][:, None, None]

    def index_boxes(self, lo_w: np.ndarray, hi_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index boxes (lo, hi), hi exclusive, of world boxes (N, 3); empty ones have hi <= lo."""
        corners = lo_w[:, None, :] + (hi_w - lo_w)[:, None, :] * _CORNERS[None]
        v = (corners - np.asarray(self.geom.origin)) @ self.inverse.T
        lo = np.maximum(np.floor(v.min(axis=1)).astype(np.int64), 0)
        hi = np.minimum(np.ceil(v.max(axis=1)).astype(np.int64) + 1, np.asarray(self.geom.size))
        return lo, hi

    def index_box(self, lo_w, hi_w):
        lo, hi = self.index_boxes(np.asarray(lo_w, dtype=np.float64)[None], np.asarray(hi_w, dtype=np.float64)[None])
        return None if np.any(hi[0] <= lo[0]) else (lo[0], hi[0])

    @staticmethod
    def clip_box(box, k0: int, k1: int):
        """The box cut to slices [k0, k1), or None."""
        if box is None:
            return None
        lo, hi = [int(v) for v in box[0]], [int(v) for v in box[1]]
        lo[2], hi[2] = max(lo[2], k0), min(hi[2], k1)
        return None if hi[0] <= lo[0] or hi[1] <= lo[1] or hi[2] <= lo[2] else (lo, hi)

    def slab_z_range(self, k0: int, k1: int):
        """World z range of slices [k0, k1) when slices are planes of constant z, else None."""
        if self.axes is None:
            return None
        z = self.axes[2][[k0, k1 - 1]].astype(np.float64)
        return float(z.min()), float(z.max())


class TubePieces:
    """Tapered tubes cut into pieces of at most PIECE_MM, with their index boxes (vectorised)."""

    def __init__(self, grid: Grid, tubes: Sequence[TaperedTube], wall: Callable[[np.ndarray], np.ndarray]):
        if not tubes:
            self.lo = self.hi = np.zeros((0, 3), dtype=np.int64)
            self.rows, self.grow, self.boxes = [], np.zeros(0), []
            return
        a = np.array([t.a for t in tubes], dtype=np.float64)
        b = np.array([t.b for t in tubes], dtype=np.float64)
        ra, rb = np.array([t.ra for t in tubes]), np.array([t.rb for t in tubes])
        n = np.maximum(1, np.ceil(np.linalg.norm(b - a, axis=1) / PIECE_MM).astype(np.int64))
        tube = np.repeat(np.arange(len(tubes)), n)
        k = np.arange(len(tube)) - np.repeat(np.cumsum(n) - n, n)
        t0, t1 = k / n[tube], (k + 1) / n[tube]
        pa = a[tube] + (b - a)[tube] * t0[:, None]
        pb = a[tube] + (b - a)[tube] * t1[:, None]
        r0, r1 = ra[tube] + t0 * (rb - ra)[tube], ra[tube] + t1 * (rb - ra)[tube]
        self.grow = np.asarray(wall(np.maximum(r0, r1)), dtype=np.float64) * np.ones(len(tube))
        reach = (np.maximum(r0, r1) + self.grow + EDGE_MM + grid.geom.spacing[2])[:, None]
        self.lo, self.hi = grid.index_boxes(np.minimum(pa, pb) - reach, np.maximum(pa, pb) + reach)
        d = pb - pa
        inv_dd = 1.0 / np.maximum(np.einsum("ij,ij->i", d, d), 1e-12)
        self.rows = np.column_stack([pa, d, inv_dd, r0, r1 - r0]).tolist()
        self._valid = np.all(self.hi > self.lo, axis=1)
        self.boxes = list(zip(self.lo.tolist(), self.hi.tolist()))

    def in_slab(self, k0: int, k1: int) -> np.ndarray:
        if not self.rows:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self._valid & (self.lo[:, 2] < k1) & (self.hi[:, 2] > k0))


def tube_distance(xyz, row, fn):
    """(radius - distance to the axis, 1 / ramp width) of a tube piece at world points x, y, z."""
    x, y, z = xyz
    p0, p1, p2, d0, d1, d2, inv_dd, r0, dr = row
    rx, ry, rz = x - p0, y - p1, z - p2
    s = rx * d0 + ry * d1
    s = s + rz * d2  # r . d
    t = s * inv_dd
    np.maximum(t, 0.0, out=t)
    np.minimum(t, 1.0, out=t)
    dist = rx * rx + ry * ry  # |r - t d|^2 = |r|^2 - t (2 r.d - t |d|^2)
    dist = dist + rz * rz
    s *= -2.0
    s += t * (1.0 / inv_dd)
    s *= t
    dist += s
    np.maximum(dist, 1e-12, out=dist)
    np.sqrt(dist, out=dist)
    inv_edge = 1.0 / fn(rz - t * d2, dist)
    t *= dr
    t += r0
    t -= dist
    return t, inv_edge
