"""Rendering of the ``luna`` phantom (int16 HU) and of its lesions' masks.

The volume is rendered slab by slab (a few centimetres of slices) in one reused float32 buffer, so
that only the int16 result is fresh memory (first touching fresh pages is slow). In each slab: the
body from two slice templates, then the large regions (lungs, heart, emphysema, gas) blended in
their boxes cut to the slab, tubes (vessels, airways, mucus-filled airways) in small boxes, lesions
and other blobs from values computed once in their boxes, noise, rounding to int16. Edges ramp over
``EDGE_MM`` in-plane and, for partial volume across thick slices, over up to the slice spacing along
z. Noise is white noise filtered in-plane (CT-like texture: correlated over about a millimetre),
drawn from a reused pool. Arithmetic is float32 throughout (scalars are Python floats).
"""

from __future__ import annotations

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
    Ellipsoid,
)
from luna_prep.synthetic.lesions import lesion_fraction
from luna_prep.synthetic.phantom import LunaChest
from luna_prep.synthetic.render_grid import EDGE_MM, Grid, TubePieces, edge_fn, tube_distance

LUNG_EDGE_MM = 1.5  # the lungs' blend width (as _blend's default)
HU_HEART = 45.0
HU_EMPHYSEMA = -975.0
LUNG_GRADIENT_HU = 35.0  # denser toward the back (dependent lung)
NOISE_CORRELATION_MM = 0.6
TEXTURE_HU = 25.0  # parenchyma: a smooth random field (2 mm grain) tiled every TEXTURE_TILE mm
TEXTURE_TILE = 64
SLAB_VOXELS = 8_000_000  # float32 buffer: 32 MB
NOISE_POOL_VOXELS = 1 << 21  # noise is added from this pool at random offsets, a chunk at a time
SLAB_MM = 20.0  # at least this thick (fewer tube pieces cut by slab boundaries)

LesionMask = tuple[np.ndarray, np.ndarray]  # (lo_xyz of mask[0, 0, 0], bool mask (z, y, x))


def _body_hu(chest: LunaChest, x, y, z):
    (bx, by), (ba, bb) = chest.body_center, chest.body_semi
    r0, r1 = chest.bone_ring
    rb = np.sqrt(((x - bx) / ba) ** 2 + ((y - by) / bb) ** 2)
    hu = np.where(rb <= 1.0, np.float32(HU_FAT), np.float32(HU_AIR))
    hu = np.where(rb <= 1.0 - chest.fat_frac, np.float32(HU_TISSUE), hu)
    ribs = np.cos(2 * np.pi * (z - chest.rib_phase_mm) / chest.rib_period_mm) > 0.3
    spine = ((x - bx) / (0.14 * bb)) ** 2 + ((y - by - 0.72 * bb) / (0.14 * bb)) ** 2 <= 1.0
    return np.where(((rb >= r0) & (rb <= r1) & ribs) | spine, np.float32(HU_BONE), hu)


class _Body:
    """Body (fat, soft tissue), rib bands and spine; from two slice templates when the direction
    matrix keeps z on the slice axis (every slice is then one of them)."""

    def __init__(self, grid: Grid, chest: LunaChest):
        self.grid, self.chest = grid, chest
        d = grid.geom.direction_matrix
        self.templates = None
        if d[2, 0] == d[2, 1] == d[0, 2] == d[1, 2] == 0.0:
            nx, ny, nz = grid.geom.size
            x, y, z = grid.coords((0, 0, 0), (nx, ny, nz))
            phase, period = chest.rib_phase_mm, chest.rib_period_mm
            self.templates = (_body_hu(chest, x[0], y[0], np.float32(phase)),
                              _body_hu(chest, x[0], y[0], np.float32(phase + period / 2)))
            self.ribs = np.cos(2 * np.pi * (z.ravel() - phase) / period) > 0.3

    def fill(self, buf: np.ndarray, k0: int, k1: int) -> None:
        if self.templates is None:
            nx, ny, _ = self.grid.geom.size
            buf[:] = _body_hu(self.chest, *self.grid.coords((0, 0, k0), (nx, ny, k1)))
            return
        with_ribs, without = self.templates
        for k in range(k0, k1):
            buf[k - k0] = with_ribs if self.ribs[k] else without


def _texture(rng: np.random.Generator):
    """Parenchyma texture as a function of world x, y, z: a periodic Gaussian-smoothed random field
    on a 1 mm lattice (nearest cell), zero mean, ``TEXTURE_HU`` standard deviation."""
    n = TEXTURE_TILE
    field = ndimage.gaussian_filter(rng.standard_normal((n, n, n)).astype(np.float32), 2.0, mode="wrap")
    field *= np.float32(TEXTURE_HU / field.std())

    def at(x, y, z):
        ix, iy, iz = (np.floor(v).astype(np.int64) % n for v in (x, y, z))
        if ix.ndim == 3 and ix.shape[:2] == (1, 1) and iy.shape[::2] == (1, 1) and iz.shape[1:] == (1, 1):
            return field.take(iz.ravel(), 0).take(iy.ravel(), 1).take(ix.ravel(), 2)  # 1-D axes: fast gathers
        return field[iz, iy, ix]
    return at


def _blend(sub, xyz, e: Ellipsoid, hu, edge: float) -> None:
    """sub += w (hu - sub), w ramping from 1 inside the ellipsoid to 0 outside over ``edge`` mm."""
    x, y, z = xyz
    (cx, cy, cz), (a, b, c) = (tuple(map(float, e.center)), tuple(map(float, e.semi)))
    w = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
    w = w + ((z - cz) / c) ** 2
    np.sqrt(w, out=w)
    k = min(a, b, c) / edge
    w *= -k
    w += k + 0.5
    _unit_clip(w)
    h = (hu(x, y, z) if callable(hu) else np.float32(hu)) - sub
    h *= w
    sub += h


def _ellipsoid_box(grid: Grid, e: Ellipsoid, edge: float, k0: int, k1: int):
    """Index box of the ellipsoid's blend region (w > 0) within slices [k0, k1), or None."""
    c, s = np.asarray(e.center, dtype=np.float64), np.asarray(e.semi, dtype=np.float64)
    big = 1.0 + 0.5 * edge / s.min() + 1e-3  # w > 0 where rho < big
    zr = grid.slab_z_range(k0, k1)
    if zr is not None:  # in-plane half-size of the cross-section nearest the centre
        dz = 0.0 if zr[0] <= c[2] <= zr[1] else min(abs(zr[0] - c[2]), abs(zr[1] - c[2]))
        q = big * big - (dz / s[2]) ** 2
        if q <= 0.0:
            return None
        half = np.array([s[0] * np.sqrt(q), s[1] * np.sqrt(q), s[2] * big])
    else:
        half = s * big
    return grid.clip_box(grid.index_box(c - half, c + half), k0, k1)


def _body_fraction(grid: Grid, center, semi, rotation, edge: float, lo, hi) -> np.ndarray:
    """Rendered fraction of a rotated ellipsoid (blob) in index box [lo, hi)."""
    x, y, z = grid.coords(lo, hi)
    c = [float(v) for v in center]
    r = np.asarray(rotation, dtype=np.float64).reshape(3, 3)  # rows: the blob's axes in world
    rho = None
    for i in range(3):
        u = [float(v) for v in r[i] / semi[i]]
        t = (x - c[0]) * u[0] + (y - c[1]) * u[1] + (z - c[2]) * u[2]
        rho = t * t if rho is None else rho + t * t
    return np.clip((1.0 - np.sqrt(rho)) * (min(semi) / edge) + 0.5, 0.0, 1.0)


class _Layer:
    """Shapes rendered once in their index boxes as HU values, max-composited slab by slab."""

    def __init__(self):
        self.items: list[tuple[list[int], list[int], np.ndarray]] = []  # (lo, hi, HU values (z, y, x))
        self._z: np.ndarray | None = None

    def add(self, lo, hi, values: np.ndarray) -> None:
        self.items.append(([int(v) for v in lo], [int(v) for v in hi], values.astype(np.float32, copy=False)))
        self._z = None

    def draw(self, buf: np.ndarray, k0: int, k1: int) -> None:
        if self._z is None:
            self._z = np.array([(lo[2], hi[2]) for lo, hi, _ in self.items]).reshape(-1, 2)
        for i in np.flatnonzero((self._z[:, 0] < k1) & (self._z[:, 1] > k0)).tolist():
            lo, hi, value = self.items[i]
            z0, z1 = max(lo[2], k0), min(hi[2], k1)
            sub = buf[z0 - k0:z1 - k0, lo[1]:hi[1], lo[0]:hi[0]]
            np.maximum(sub, value[z0 - lo[2]:z1 - lo[2]], out=sub)


def _bodies(grid: Grid, chest: LunaChest, fn) -> tuple[_Layer, list[LesionMask]]:
    """Lesions and other blobs as a layer, and each lesion's rendered mask."""
    layer, masks = _Layer(), []
    for les in chest.lesions:
        reach = les.reach + EDGE_MM + grid.geom.spacing[2]
        c = np.asarray(les.center)
        lo, hi = grid.index_box(c - reach, c + reach)
        xyz = grid.coords(lo, hi)
        body, core = lesion_fraction(les, *xyz, fn)
        if les.location == "juxta-pleural":  # flattened against the pleura: what is drawn is in the lung
            inside = np.max([np.clip((1.0 - e.rho(*xyz)) * (min(e.semi) / LUNG_EDGE_MM) + 0.5, 0.0, 1.0)
                             for e in chest.lungs], axis=0)
            body, core = np.minimum(body, inside), np.minimum(core, inside)
        layer.add(lo, hi, np.maximum(HU_AIR + body * (les.hu - HU_AIR), HU_AIR + core * (les.core_hu - HU_AIR)))
        masks.append((lo, body >= 0.5))
    for blob in chest.blobs:
        reach = max(blob.semi) + EDGE_MM + grid.geom.spacing[2]
        box = grid.index_box(np.asarray(blob.center) - reach, np.asarray(blob.center) + reach)
        if box is not None:
            f = _body_fraction(grid, blob.center, blob.semi, blob.rotation, EDGE_MM, *box)
            layer.add(box[0], box[1], HU_AIR + f * (blob.hu - HU_AIR))
    return layer, masks


def _tube_layer(grid: Grid, pieces: TubePieces, hu: float, fn) -> _Layer:
    """Solid tubes (vessels, mucus-filled airways) at ``hu``, each piece computed once in its whole box."""
    layer, hu_air = _Layer(), float(HU_AIR)
    for i in pieces.in_slab(0, grid.geom.size[2]).tolist():
        lo, hi = pieces.boxes[i]
        f, inv_edge = tube_distance(grid.coords(lo, hi), pieces.rows[i], fn)  # radius - distance
        f *= inv_edge
        f += 0.5
        _unit_clip(f)
        f *= hu - hu_air
        f += hu_air
        layer.add(lo, hi, f)
    return layer


def _airways(buf, k0: int, k1: int, grid: Grid, pieces: TubePieces, fn) -> None:
    """Airways: tissue walls of width ``grow`` max-composited, then their air lumen blended in."""
    hu_air, hu = float(HU_AIR), float(HU_TISSUE)
    for i in pieces.in_slab(k0, k1).tolist():
        lo, hi = grid.clip_box(pieces.boxes[i], k0, k1)
        sub = buf[lo[2] - k0:hi[2] - k0, lo[1]:hi[1], lo[0]:hi[0]]
        rd, inv_edge = tube_distance(grid.coords(lo, hi), pieces.rows[i], fn)  # rd: radius - distance
        f = (rd + float(pieces.grow[i])) * inv_edge
        f += 0.5
        _unit_clip(f)
        f *= hu - hu_air
        f += hu_air
        np.maximum(sub, f, out=sub)
        rd *= inv_edge
        rd += 0.5
        _unit_clip(rd)
        rd *= hu_air - sub
        sub += rd


def _unit_clip(a: np.ndarray) -> None:
    """a = clip(a, 0, 1) in place (two ufuncs: np.clip's wrapper costs more on small arrays)."""
    np.maximum(a, 0.0, out=a)
    np.minimum(a, 1.0, out=a)


def _noise(geom: ScanGeometry, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """A pool of at least NOISE_POOL_VOXELS voxels (whole slices) of in-plane correlated noise."""
    nx, ny, _ = geom.size
    n_slices = max(2, -(-NOISE_POOL_VOXELS // (nx * ny)))
    pool = rng.standard_normal((n_slices, ny, nx), dtype=np.float32)
    s = NOISE_CORRELATION_MM / geom.spacing[0]
    ndimage.gaussian_filter(pool, (0.0, s, s), output=pool, truncate=3.0)
    pool *= np.float32(sigma / max(float(pool.std()), 1e-6))
    return pool.ravel()


def _regions(chest: LunaChest, texture) -> list[tuple[Ellipsoid, object, float]]:
    """(ellipsoid, HU or HU function of world x, y, z, blend width), in drawing order."""
    out: list[tuple[Ellipsoid, object, float]] = []
    for lung in chest.lungs:
        cy, sy, base = float(lung.center[1]), float(lung.semi[1]), float(chest.lung_hu)
        out.append((lung, lambda x, y, z, cy=cy, sy=sy, base=base:
                    base + LUNG_GRADIENT_HU * (y - cy) / sy + texture(x, y, z), LUNG_EDGE_MM))
    out += [(chest.heart_fat, HU_FAT, LUNG_EDGE_MM), (chest.heart, HU_HEART, LUNG_EDGE_MM)]
    out += [(e, HU_EMPHYSEMA, 3.0) for e in chest.emphysema]
    return out + [(e, HU_AIR, 1.0) for e in chest.gas]


def _slab_slices(geom: ScanGeometry) -> int:
    nx, ny, nz = geom.size
    want = max(1, int(np.ceil(SLAB_MM / geom.spacing[2])), SLAB_VOXELS // (2 * nx * ny))
    return int(min(nz, want, max(1, SLAB_VOXELS // (nx * ny))))


def render_luna(geom: ScanGeometry, chest: LunaChest, rng: np.random.Generator) -> tuple[np.ndarray, list[LesionMask]]:
    """The scan as int16 HU (z, y, x) and, per lesion, its rendered mask on the scan's grid."""
    nx, ny, nz = geom.size
    grid, fn = Grid(geom), edge_fn(chest.slice_mm)
    body, regions = _Body(grid, chest), _regions(chest, _texture(rng))
    vessels = _tube_layer(grid, TubePieces(grid, chest.vessels, lambda r: 0.0), float(chest.vessel_hu), fn)
    airways = TubePieces(grid, chest.airways, lambda r: 0.3 + 0.2 * r)
    plugs = _tube_layer(grid, TubePieces(grid, chest.plugs, lambda r: 0.0), HU_TISSUE, fn)
    bodies, masks = _bodies(grid, chest, fn)
    slab = _slab_slices(geom)
    pool = _noise(geom, rng, chest.noise_sigma)
    chunk = max(1, pool.size // (2 * nx * ny))  # slices per noise draw
    buffer = np.empty((slab, ny, nx), dtype=np.float32)
    out = np.empty((nz, ny, nx), dtype=np.int16)
    jj, ii = np.mgrid[0:ny, 0:nx]
    outside_fov = np.hypot(ii - (nx - 1) / 2, jj - (ny - 1) / 2) > min(nx, ny) / 2
    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        buf = buffer[:k1 - k0]
        body.fill(buf, k0, k1)
        for e, hu, edge in regions:
            box = _ellipsoid_box(grid, e, edge, k0, k1)
            if box is not None:
                lo, hi = box
                _blend(buf[lo[2] - k0:hi[2] - k0, lo[1]:hi[1], lo[0]:hi[0]], grid.coords(lo, hi), e, hu, edge)
        vessels.draw(buf, k0, k1)
        _airways(buf, k0, k1, grid, airways, fn)
        plugs.draw(buf, k0, k1)
        bodies.draw(buf, k0, k1)
        for c0 in range(0, k1 - k0, chunk):
            part = buf[c0:c0 + chunk]
            start = int(rng.integers(0, pool.size - part.size + 1))
            part += pool[start:start + part.size].reshape(part.shape)
        np.rint(buf, out=buf)
        np.maximum(buf, HU_CLIP[0], out=buf)  # nothing in the phantom approaches HU_CLIP[1] (3071)
        block = out[k0:k1]
        np.copyto(block, buf, casting="unsafe")
        if chest.fov_clip:
            block[:, outside_fov] = HU_OUTSIDE_FOV
    return out, masks

