"""Vectorized rendering of a synthetic chest CT (int16 HU) from anatomy defined in world mm.

Every voxel's world position comes from the scan's geometry (origin + D @ (spacing * index)), so
shapes defined in world mm land where they are defined whatever the direction matrix. Each shape
is evaluated only in the index box around its world bounding box, with numpy broadcasting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from luna_prep.luna16.geometry import ScanGeometry

HU_AIR = -1000.0
HU_FAT = -100.0
HU_TISSUE = 40.0
HU_BONE = 700.0
HU_LUNG = -850.0
HU_VESSEL = 40.0
HU_OUTSIDE_FOV = -2048
HU_CLIP = (-1024, 3071)
NOISE_SIGMA = 20.0
EDGE_MM = 0.7  # nodules and vessels: full intensity up to their radius, fading to none at radius + EDGE_MM
LUNG_EDGE_MM = 1.0
NOISE_POOL = 1 << 23
SEGMENT_PIECE_MM = 8.0  # vessels are rendered in pieces of at most this length (small boxes)


@dataclass(frozen=True)
class Ellipsoid:
    """Axis-aligned (in world) ellipsoid."""

    center: tuple[float, float, float]
    semi: tuple[float, float, float]

    def rho(self, x, y, z):
        """Normalized radius (< 1 inside) of world points given as broadcastable x, y, z."""
        (cx, cy, cz), (a, b, c) = self.center, self.semi
        return np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2)

    def contains_ball(self, center, radius: float) -> bool:
        """Whether the ball (centre, radius) lies inside (checked on 400 surface points)."""
        p = np.asarray(center, dtype=np.float64) + radius * _SPHERE_DIRS
        return bool(np.all(self.rho(p[:, 0], p[:, 1], p[:, 2]) < 1.0))

    def random_point(self, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
        """A point uniformly distributed inside the ellipsoid shrunk by ``scale``."""
        u = rng.standard_normal(3)
        u *= rng.random() ** (1.0 / 3.0) / np.linalg.norm(u)
        return np.asarray(self.center) + scale * np.asarray(self.semi) * u


def _fibonacci_sphere(n: int) -> np.ndarray:
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (1.0 + 5.0**0.5) * k
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


_SPHERE_DIRS = _fibonacci_sphere(400)


@dataclass(frozen=True)
class Tube:
    """A vessel: a straight segment a -> b of constant radius (world mm)."""

    a: tuple[float, float, float]
    b: tuple[float, float, float]
    radius: float

    def distance(self, x, y, z):
        """Distance of world points (broadcastable x, y, z) to the tube's axis segment."""
        return segment_distance(x, y, z, np.asarray(self.a), np.asarray(self.b))

    def point(self, t: float) -> np.ndarray:
        return np.asarray(self.a) + t * (np.asarray(self.b) - np.asarray(self.a))

    @property
    def length(self) -> float:
        return float(np.linalg.norm(np.asarray(self.b) - np.asarray(self.a)))


@dataclass(frozen=True)
class Ball:
    """A nodule: sphere of ``radius`` mm at ``hu`` HU."""

    center: tuple[float, float, float]
    radius: float
    hu: float


@dataclass(frozen=True)
class Chest:
    """Everything a synthetic scan shows, in world mm (x, y, z)."""

    body_center: tuple[float, float]  # elliptic cylinder along world z
    body_semi: tuple[float, float]
    fat_frac: float  # outer fraction of the body's normalized radius that is fat
    bone_ring: tuple[float, float]  # ribs between these normalized body radii ...
    rib_period_mm: float  # ... on bands repeating along z
    rib_phase_mm: float
    lungs: tuple[Ellipsoid, ...]
    vessels: tuple[Tube, ...]
    nodules: tuple[Ball, ...]
    fov_clip: bool  # HU_OUTSIDE_FOV outside the circle inscribed in the in-plane index square


def segment_distance(x, y, z, a: np.ndarray, b: np.ndarray):
    """Distance of world points (broadcastable x, y, z arrays) to the segment a -> b."""
    d = b - a
    dd = float(d @ d)
    rx, ry, rz = x - a[0], y - a[1], z - a[2]
    t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / dd, 0.0, 1.0) if dd > 0 else 0.0
    return np.sqrt((rx - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rz - t * d[2]) ** 2)


def world_coords(geom: ScanGeometry, lo_xyz, hi_xyz):
    """World x, y, z (float32, broadcastable to (z, y, x)) of the voxels in index box [lo, hi)."""
    m = geom.direction_matrix * np.asarray(geom.spacing)[None, :]  # m[c, a]: mm of axis c per index a
    idx = (
        np.arange(lo_xyz[0], hi_xyz[0], dtype=np.float64)[None, None, :],
        np.arange(lo_xyz[1], hi_xyz[1], dtype=np.float64)[None, :, None],
        np.arange(lo_xyz[2], hi_xyz[2], dtype=np.float64)[:, None, None],
    )
    out = []
    for c in range(3):
        w = np.full((1, 1, 1), geom.origin[c])
        for a in range(3):
            if m[c, a] != 0.0:  # skip zero terms: diagonal directions give 1-D coordinate arrays
                w = w + m[c, a] * idx[a]
        out.append(w.astype(np.float32))
    return out


def index_box(geom: ScanGeometry, lo_world, hi_world):
    """Index box (lo, hi) in (x, y, z), hi exclusive, covering a world box; None if outside."""
    corners = np.array([[x, y, z] for x in (lo_world[0], hi_world[0])
                        for y in (lo_world[1], hi_world[1]) for z in (lo_world[2], hi_world[2])])
    v = geom.world_to_voxel(corners)
    lo = np.maximum(np.floor(v.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(v.max(axis=0)).astype(int) + 1, np.asarray(geom.size))
    return None if np.any(hi <= lo) else (lo, hi)


def _max_composite(vol, geom, lo_world, hi_world, target_fn) -> None:
    """vol = max(vol, target) inside the box; target_fn(x, y, z) gives HU (idempotent on overlaps)."""
    box = index_box(geom, lo_world, hi_world)
    if box is None:
        return
    lo, hi = box
    sub = vol[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    np.maximum(sub, target_fn(*world_coords(geom, lo, hi)), out=sub)


def _ramp(dist, radius: float, edge: float):
    """1 within ``radius``, linearly down to 0 at ``radius + edge``."""
    return np.clip((radius + edge - dist) / edge, 0.0, 1.0)


def render(geom: ScanGeometry, chest: Chest, rng: np.random.Generator) -> np.ndarray:
    """The scan as an int16 HU array in numpy (z, y, x) order."""
    nx, ny, nz = geom.size
    vol = np.empty((nz, ny, nx), dtype=np.float32)
    (bx, by), (ba, bb) = chest.body_center, chest.body_semi
    r0, r1 = chest.bone_ring
    slab = max(1, 4_000_000 // (nx * ny))
    for k0 in range(0, nz, slab):  # body, fat, ribs and spine
        k1 = min(nz, k0 + slab)
        x, y, z = world_coords(geom, (0, 0, k0), (nx, ny, k1))
        rb = np.sqrt(((x - bx) / ba) ** 2 + ((y - by) / bb) ** 2)
        hu = np.where(rb <= 1.0, np.float32(HU_FAT), np.float32(HU_AIR))
        hu = np.where(rb <= 1.0 - chest.fat_frac, np.float32(HU_TISSUE), hu)
        ribs = np.cos(2 * np.pi * (z - chest.rib_phase_mm) / chest.rib_period_mm) > 0.2
        spine = ((x - bx) / (0.14 * bb)) ** 2 + ((y - by - 0.72 * bb) / (0.14 * bb)) ** 2 <= 1.0
        hu = np.where(((rb >= r0) & (rb <= r1) & ribs) | spine, np.float32(HU_BONE), hu)
        vol[k0:k1] = hu
    for lung in chest.lungs:
        c, s = np.asarray(lung.center), np.asarray(lung.semi)
        box = index_box(geom, c - s - LUNG_EDGE_MM, c + s + LUNG_EDGE_MM)
        if box is None:
            continue
        lo, hi = box
        sub = vol[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        w = np.clip((1.0 - lung.rho(*world_coords(geom, lo, hi))) * (min(s) / LUNG_EDGE_MM) + 0.5, 0.0, 1.0)
        sub += w * (np.float32(HU_LUNG) - sub)
    for tube in chest.vessels:  # vessels sit inside lungs: max-compositing over lung HU
        a, b = np.asarray(tube.a), np.asarray(tube.b)
        n_pieces = max(1, int(np.ceil(tube.length / SEGMENT_PIECE_MM)))
        reach = tube.radius + EDGE_MM + 0.5
        for p in range(n_pieces):
            pa, pb = a + (b - a) * (p / n_pieces), a + (b - a) * ((p + 1) / n_pieces)
            _max_composite(vol, geom, np.minimum(pa, pb) - reach, np.maximum(pa, pb) + reach,
                           lambda x, y, z, pa=pa, pb=pb, r=tube.radius: HU_LUNG + (HU_VESSEL - HU_LUNG)
                           * _ramp(segment_distance(x, y, z, pa, pb), r, EDGE_MM))
    for ball in chest.nodules:
        c = np.asarray(ball.center)
        reach = ball.radius + EDGE_MM + 0.5
        _max_composite(vol, geom, c - reach, c + reach,
                       lambda x, y, z, c=c, ball=ball: HU_LUNG + (ball.hu - HU_LUNG) * _ramp(
                           np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2), ball.radius, EDGE_MM))
    out = np.empty((nz, ny, nx), dtype=np.int16)
    jj, ii = np.mgrid[0:ny, 0:nx]
    outside_fov = np.hypot(ii - (nx - 1) / 2, jj - (ny - 1) / 2) > min(nx, ny) / 2
    # Gaussian noise; big volumes reuse a pool of 2**23 draws at random offsets (drawing is the bottleneck)
    pool = rng.standard_normal(min(vol.size, NOISE_POOL), dtype=np.float32) * np.float32(NOISE_SIGMA)
    for k0 in range(0, nz, slab):  # noise, clipping, field of view
        k1 = min(nz, k0 + slab)
        block = vol[k0:k1]
        n = block.size
        start = k0 * nx * ny if pool.size == vol.size else int(rng.integers(0, pool.size - n + 1))
        block += pool[start:start + n].reshape(block.shape)
        np.rint(block, out=block)
        np.clip(block, HU_CLIP[0], HU_CLIP[1], out=block)
        if chest.fov_clip:
            block[:, outside_fov] = HU_OUTSIDE_FOV
        out[k0:k1] = block
    return out
