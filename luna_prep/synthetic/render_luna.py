"""Rendering of the ``luna`` phantom (int16 HU) and of its lesions' masks.

Large regions (body, lungs, heart, gas) are blended in slabs or in their index boxes; tubes and
lesions only in small boxes around them. Edges ramp over ``EDGE_MM`` in-plane and, for partial
volume across thick slices, over up to the slice spacing along z. Noise is white noise filtered
in-plane (CT-like texture: correlated over about a millimetre), drawn from a reused pool.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.synthetic.anatomy import (
    HU_AIR,
    HU_BONE,
    HU_CLIP,
    HU_FAT,
    HU_OUTSIDE_FOV,
    HU_TISSUE,
    NOISE_POOL,
    Ellipsoid,
    index_box,
    world_coords,
)
from luna_prep.synthetic.lesions import Lesion, lesion_fraction
from luna_prep.synthetic.phantom import LunaChest
from luna_prep.synthetic.trees import TaperedTube

EDGE_MM = 0.8
LUNG_EDGE_MM = 1.5  # the lungs' blend width (as _blend_ellipsoid's default)
PIECE_MM = 8.0
HU_HEART = 45.0
HU_EMPHYSEMA = -975.0
LUNG_GRADIENT_HU = 35.0  # denser toward the back (dependent lung)
NOISE_CORRELATION_MM = 0.6
TEXTURE_HU = 25.0  # parenchyma: a smooth random field (2 mm grain) tiled every TEXTURE_TILE mm
TEXTURE_TILE = 64

LesionMask = tuple[np.ndarray, np.ndarray]  # (lo_xyz of mask[0, 0, 0], bool mask (z, y, x))


def _edge_fn(slice_mm: float):
    pv = max(0.0, slice_mm - EDGE_MM)
    return lambda dz, dist: EDGE_MM + pv * np.abs(dz) / dist


@lru_cache(maxsize=8)
def _world_to_index(geom: ScanGeometry) -> np.ndarray:
    return np.linalg.inv(geom.direction_matrix * np.asarray(geom.spacing)[None, :])


def _fast_index_box(geom: ScanGeometry, lo_w, hi_w):
    """``anatomy.index_box`` with the geometry's inverse computed once (called per tube piece)."""
    corners = np.array(np.meshgrid(*zip(lo_w, hi_w), indexing="ij")).reshape(3, -1).T
    v = (corners - np.asarray(geom.origin)) @ _world_to_index(geom).T
    lo = np.maximum(np.floor(v.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(v.max(axis=0)).astype(int) + 1, np.asarray(geom.size))
    return None if np.any(hi <= lo) else (lo, hi)


def _box(vol, geom, lo_w, hi_w):
    box = _fast_index_box(geom, lo_w, hi_w)
    if box is None:
        return None, None
    lo, hi = box
    return vol[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]], world_coords(geom, lo, hi)


def _blend_ellipsoid(vol, geom, e: Ellipsoid, hu_fn, edge: float = LUNG_EDGE_MM) -> None:
    c, s = np.asarray(e.center), np.asarray(e.semi)
    sub, xyz = _box(vol, geom, c - s - edge, c + s + edge)
    if sub is None:
        return
    w = np.clip((1.0 - e.rho(*xyz)) * (min(s) / edge) + 0.5, 0.0, 1.0)
    sub += w * (hu_fn(*xyz) - sub)


def _body_hu(chest: LunaChest, x, y, z):
    (bx, by), (ba, bb) = chest.body_center, chest.body_semi
    r0, r1 = chest.bone_ring
    rb = np.sqrt(((x - bx) / ba) ** 2 + ((y - by) / bb) ** 2)
    hu = np.where(rb <= 1.0, np.float32(HU_FAT), np.float32(HU_AIR))
    hu = np.where(rb <= 1.0 - chest.fat_frac, np.float32(HU_TISSUE), hu)
    ribs = np.cos(2 * np.pi * (z - chest.rib_phase_mm) / chest.rib_period_mm) > 0.3
    spine = ((x - bx) / (0.14 * bb)) ** 2 + ((y - by - 0.72 * bb) / (0.14 * bb)) ** 2 <= 1.0
    return np.where(((rb >= r0) & (rb <= r1) & ribs) | spine, np.float32(HU_BONE), hu)


def _body(vol, geom, chest: LunaChest) -> None:
    """Body (fat, soft tissue), rib bands and spine; slice by slice from two templates when the
    direction matrix keeps z on the slice axis (every slice is then one of them)."""
    nx, ny, nz = geom.size
    d = geom.direction_matrix
    if d[2, 0] == d[2, 1] == d[0, 2] == d[1, 2] == 0.0:
        x, y, z = world_coords(geom, (0, 0, 0), (nx, ny, nz))
        z = z.ravel()
        with_ribs = _body_hu(chest, x[0], y[0], np.float32(chest.rib_phase_mm))
        without = _body_hu(chest, x[0], y[0], np.float32(chest.rib_phase_mm + chest.rib_period_mm / 2))
        ribs = np.cos(2 * np.pi * (z - chest.rib_phase_mm) / chest.rib_period_mm) > 0.3
        for k in range(nz):
            vol[k] = with_ribs if ribs[k] else without
        return
    slab = max(1, 4_000_000 // (nx * ny))
    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        vol[k0:k1] = _body_hu(chest, *world_coords(geom, (0, 0, k0), (nx, ny, k1)))


def _tube_pieces(tube: TaperedTube):
    a, b = np.asarray(tube.a), np.asarray(tube.b)
    n = max(1, int(np.ceil(tube.length / PIECE_MM)))
    for p in range(n):
        t0, t1 = p / n, (p + 1) / n
        yield a + (b - a) * t0, a + (b - a) * t1, tube.radius_at(t0), tube.radius_at(t1)


def _tube_fraction(x, y, z, pa, pb, ra, rb, grow: float, edge_fn):
    d = pb - pa
    t = np.clip(((x - pa[0]) * d[0] + (y - pa[1]) * d[1] + (z - pa[2]) * d[2]) / max(float(d @ d), 1e-12), 0.0, 1.0)
    ex, ey, ez = x - pa[0] - t * d[0], y - pa[1] - t * d[1], z - pa[2] - t * d[2]
    dist = np.sqrt(ex * ex + ey * ey + ez * ez)
    return np.clip((ra + t * (rb - ra) + grow - dist) / edge_fn(ez, np.maximum(dist, 1e-6)) + 0.5, 0.0, 1.0)


def _tubes(vol, geom, tubes, hu: float, edge_fn, wall=None) -> None:
    """Max-composite tubes at ``hu``; with ``wall(r)``, tissue walls of that thickness and an air lumen."""
    for tube in tubes:
        for pa, pb, ra, rb in _tube_pieces(tube):
            grow = wall(max(ra, rb)) if wall else 0.0
            reach = max(ra, rb) + grow + EDGE_MM + geom.spacing[2]
            sub, (x, y, z) = _box(vol, geom, np.minimum(pa, pb) - reach, np.maximum(pa, pb) + reach)
            if sub is None:
                continue
            f = _tube_fraction(x, y, z, pa, pb, ra, rb, grow, edge_fn)
            np.maximum(sub, HU_AIR + f * (hu - HU_AIR), out=sub)
            if wall:
                lumen = _tube_fraction(x, y, z, pa, pb, ra, rb, 0.0, edge_fn)
                sub += lumen * (HU_AIR - sub)


def _lesions(vol, geom, lesions: tuple[Lesion, ...], lungs: tuple[Ellipsoid, ...], edge_fn) -> list[LesionMask]:
    masks = []
    for les in lesions:
        reach = les.reach + EDGE_MM + geom.spacing[2]
        c = np.asarray(les.center)
        box = index_box(geom, c - reach, c + reach)
        lo, hi = box
        sub = vol[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        xyz = world_coords(geom, lo, hi)
        body, core = lesion_fraction(les, *xyz, edge_fn)
        if les.location == "juxta-pleural":  # flattened against the pleura: what is drawn is in the lung
            inside = np.max([np.clip((1.0 - e.rho(*xyz)) * (min(e.semi) / LUNG_EDGE_MM) + 0.5, 0.0, 1.0)
                             for e in lungs], axis=0)
            body, core = np.minimum(body, inside), np.minimum(core, inside)
        value = np.maximum(HU_AIR + body * (les.hu - HU_AIR), HU_AIR + core * (les.core_hu - HU_AIR))
        np.maximum(sub, value, out=sub)
        masks.append((lo, body >= 0.5))
    return masks


def _noise(geom: ScanGeometry, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """A pool of at least 2**23 voxels (and more than one slab) of in-plane correlated noise."""
    nx, ny, _ = geom.size
    n_slices = max(NOISE_POOL // (nx * ny), 4_000_000 // (nx * ny) + 1)
    pool = rng.standard_normal((n_slices, ny, nx), dtype=np.float32)
    s = NOISE_CORRELATION_MM / geom.spacing[0]
    ndimage.gaussian_filter(pool, (0.0, s, s), output=pool, truncate=3.0)
    pool *= np.float32(sigma / max(float(pool.std()), 1e-6))
    return pool.ravel()


def _texture(rng: np.random.Generator):
    """Parenchyma texture as a function of world x, y, z: a periodic Gaussian-smoothed random field
    on a 1 mm lattice (nearest cell), zero mean, ``TEXTURE_HU`` standard deviation."""
    n = TEXTURE_TILE
    field = ndimage.gaussian_filter(rng.standard_normal((n, n, n)).astype(np.float32), 2.0, mode="wrap")
    field *= np.float32(TEXTURE_HU / field.std())

    def at(x, y, z):
        ix, iy, iz = (np.floor(v).astype(np.int64) % n for v in (x, y, z))
        return field[iz, iy, ix]
    return at


def render_luna(geom: ScanGeometry, chest: LunaChest, rng: np.random.Generator) -> tuple[np.ndarray, list[LesionMask]]:
    """The scan as int16 HU (z, y, x) and, per lesion, its rendered mask on the scan's grid."""
    nx, ny, nz = geom.size
    vol = np.empty((nz, ny, nx), dtype=np.float32)
    _body(vol, geom, chest)
    edge_fn = _edge_fn(chest.slice_mm)
    texture = _texture(rng)
    for lung in chest.lungs:
        cy, sy = lung.center[1], lung.semi[1]
        _blend_ellipsoid(vol, geom, lung,
                         lambda x, y, z, cy=cy, sy=sy: (chest.lung_hu + LUNG_GRADIENT_HU * (y - cy) / sy
                                                        + texture(x, y, z)))
    _blend_ellipsoid(vol, geom, chest.heart_fat, lambda x, y, z: HU_FAT)
    _blend_ellipsoid(vol, geom, chest.heart, lambda x, y, z: HU_HEART)
    for e in chest.emphysema:
        _blend_ellipsoid(vol, geom, e, lambda x, y, z: HU_EMPHYSEMA, edge=3.0)
    for e in chest.gas:
        _blend_ellipsoid(vol, geom, e, lambda x, y, z: HU_AIR, edge=1.0)
    _tubes(vol, geom, chest.vessels, chest.vessel_hu, edge_fn)
    _tubes(vol, geom, chest.airways, HU_TISSUE, edge_fn, wall=lambda r: 0.3 + 0.2 * r)
    masks = _lesions(vol, geom, chest.lesions, chest.lungs, edge_fn)
    pool = _noise(geom, rng, chest.noise_sigma)
    # int16 result in the first half of the float32 buffer: slab k's int16 bytes only overlap float
    # slabs <= k, already final (fresh pages are slow to touch; this saves allocating another volume)
    out = np.frombuffer(vol, dtype=np.int16, count=vol.size).reshape(vol.shape)
    jj, ii = np.mgrid[0:ny, 0:nx]
    outside_fov = np.hypot(ii - (nx - 1) / 2, jj - (ny - 1) / 2) > min(nx, ny) / 2
    slab = max(1, 4_000_000 // (nx * ny))
    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        block = vol[k0:k1]
        start = int(rng.integers(0, pool.size - block.size + 1))
        block += pool[start:start + block.size].reshape(block.shape)
        np.rint(block, out=block)
        np.clip(block, HU_CLIP[0], HU_CLIP[1], out=block)
        if chest.fov_clip:
            block[:, outside_fov] = HU_OUTSIDE_FOV
        out[k0:k1] = block.astype(np.int16)
    return out, masks
