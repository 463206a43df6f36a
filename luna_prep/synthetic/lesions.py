"""Nodules of the ``luna`` phantom: LUNA16's size distribution, four types, three locations, three shapes.

A lesion is a star-shaped body r(u) = r0 (1 + sum_k A_k exp((u . v_k - 1) / w_k)) (lobes; none for
``round``), optionally with spicules (thin tapered tubes from its surface outward). ``r0`` is set so
that the body's volume equals that of a ball of the drawn diameter. Its voxels' rendered fraction
(1 inside, 0.5 on the surface, 0 outside, ramping over the edge width) is what the scan shows and,
thresholded at 0.5, its mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from luna_prep.synthetic.anatomy import _SPHERE_DIRS
from luna_prep.synthetic.shape_bank import load_shape_bank, smoothed
from luna_prep.synthetic.trees import TaperedTube, _turn

# Diameter quantiles (0, 5, ..., 100 %) of the 1186 nodules of LUNA16's annotations.csv
# (tests/data/annotations.csv, CC BY 4.0); drawn from by inverse CDF, clipped to 3..30 mm.
LUNA16_DIAMETER_QUANTILES = (3.25, 4.09, 4.4, 4.67, 4.9, 5.11, 5.31, 5.63, 5.9, 6.17, 6.43, 6.87, 7.3, 7.92,
                             8.72, 9.7, 11.07, 12.86, 15.48, 18.95, 30.0)
KINDS = {"solid": 0.6, "part-solid": 0.12, "ground-glass": 0.16, "calcified": 0.12}
LOCATIONS = {"isolated": 0.35, "juxta-pleural": 0.35, "juxta-vascular": 0.3}
SHAPES = {"round": 0.25, "lobulated": 0.35, "spiculated": 0.25, "lidc": 0.15}  # lidc: a real shape (shape_bank)
GGO_HU = (-700.0, -300.0)
SOLID_HU = (0.0, 60.0)
CALCIFIED_HU = (250.0, 900.0)


@dataclass(frozen=True)
class Lesion:
    center: tuple[float, float, float]
    diameter_mm: float  # of the volume-equivalent ball: the annotation's diameter
    kind: str
    location: str
    shape: str
    hu: float  # body (ground glass for part-solid)
    core_hu: float  # solid core of part-solid, calcification of calcified; = hu otherwise
    core_frac: float  # core radius / body radius (0: no core)
    r0: float
    lobes: tuple[tuple[float, float, float, float, float], ...]  # (vx, vy, vz, amplitude, width)
    spicules: tuple[TaperedTube, ...]
    bank_index: int = -1  # lidc: the shape_bank shape, rotated and scaled to the diameter
    rotation: tuple[float, ...] = ()  # lidc: row-major 3x3, bank frame -> world
    scale: float = 1.0  # lidc: world mm per bank mm

    @property
    def reach(self) -> float:
        """Radius of a ball around the centre that holds the whole lesion."""
        if self.bank_index >= 0:
            return load_shape_bank()[self.bank_index].reach_mm * self.scale
        body = self.r0 * (1.0 + sum(a for *_, a, _w in self.lobes))
        ends = [float(np.linalg.norm(np.subtract(s.b, self.center))) + s.rb for s in self.spicules]
        return max([body, *ends])

    def radius_along(self, u: np.ndarray) -> np.ndarray:
        """Body radius along unit vectors u (..., 3)."""
        r = np.ones(u.shape[:-1], dtype=np.float32)
        for vx, vy, vz, amp, w in self.lobes:
            r += amp * np.exp((u[..., 0] * vx + u[..., 1] * vy + u[..., 2] * vz - 1.0) / w)
        return self.r0 * r


def choose(rng: np.random.Generator, table: dict[str, float]) -> str:
    names = list(table)
    p = np.array([table[k] for k in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def luna16_diameter(rng: np.random.Generator) -> float:
    q = np.asarray(LUNA16_DIAMETER_QUANTILES)
    return float(np.clip(np.interp(rng.random(), np.linspace(0.0, 1.0, len(q)), q), 3.0, 30.0))


def _lobes(rng: np.random.Generator, shape: str) -> tuple:
    if shape == "round":
        return ()
    out = []
    for _ in range(int(rng.integers(3, 7))):
        v = rng.standard_normal(3)
        v /= np.linalg.norm(v)
        out.append((*map(float, v), float(rng.uniform(0.2, 0.45)), float(rng.uniform(0.1, 0.25))))
    return tuple(out)


def make_lesion(rng: np.random.Generator, center, diameter: float, kind: str, location: str, shape: str,
                vessel_hu: float) -> Lesion:
    """A lesion of the given kind and shape at ``center`` whose volume matches ``diameter``."""
    lidc: dict = {}
    if shape == "lidc":
        i = int(rng.integers(len(load_shape_bank())))
        rot = Rotation.from_quat(rng.standard_normal(4)).as_matrix()
        lidc = {"bank_index": i, "rotation": tuple(float(v) for v in rot.ravel()),
                "scale": diameter / load_shape_bank()[i].equivalent_diameter_mm}
    lobes = _lobes(rng, shape) if shape != "lidc" else ()
    probe = Lesion(tuple(center), diameter, kind, location, shape, 0.0, 0.0, 0.0, 1.0, lobes, ())
    r0 = diameter / 2.0 / float(np.mean(probe.radius_along(_SPHERE_DIRS) ** 3)) ** (1.0 / 3.0)
    hu = float(rng.uniform(*SOLID_HU)) if kind != "ground-glass" else float(rng.uniform(*GGO_HU))
    core_hu, core_frac = hu, 0.0
    if kind == "part-solid":
        hu, core_hu, core_frac = (float(rng.uniform(*GGO_HU)), float(rng.uniform(vessel_hu, 60.0)),
                                  float(rng.uniform(0.3, 0.6)))
    elif kind == "calcified":
        core_hu, core_frac = float(rng.uniform(*CALCIFIED_HU)), float(rng.uniform(0.4, 0.9))
    spicules = []
    if shape == "spiculated":
        c = np.asarray(center, dtype=np.float64)
        for _ in range(int(rng.integers(5, 12))):
            u = rng.standard_normal(3)
            u /= np.linalg.norm(u)
            start = c + 0.8 * r0 * u
            d = _turn(rng, u, rng.uniform(0.0, 20.0))
            length = r0 * rng.uniform(0.8, 1.6) + 3.0
            spicules.append(TaperedTube(tuple(start), tuple(start + length * d),
                                        float(min(0.3 * r0, rng.uniform(0.7, 1.2))), 0.25, 0))
    return Lesion(tuple(float(v) for v in center), float(diameter), kind, location, shape, hu, core_hu, core_frac,
                  float(r0), lobes, tuple(spicules), **lidc)


def _bank_fraction(lesion: Lesion, dx, dy, dz, shrink: float = 1.0) -> np.ndarray:
    """The rotated, scaled bank shape's smoothed fraction at offsets (dx, dy, dz) from the centre."""
    shape = load_shape_bank()[lesion.bank_index]
    r = np.asarray(lesion.rotation).reshape(3, 3)
    d = np.stack(np.broadcast_arrays(dx, dy, dz), axis=-1).astype(np.float64)
    q = d @ r / (lesion.scale * shrink)  # world offset -> bank mm (r is orthonormal: r.T @ d per point)
    idx = shape.centroid_zyx + q[..., ::-1] / np.asarray(shape.spacing)[::-1]
    out = ndimage.map_coordinates(smoothed(lesion.bank_index), np.moveaxis(idx, -1, 0), order=1, cval=0.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def lesion_fraction(lesion: Lesion, x, y, z, edge_fn) -> tuple[np.ndarray, np.ndarray]:
    """(body fraction, core fraction) in [0, 1] at world points; edge_fn(dz, dist) gives the ramp width."""
    c = lesion.center
    dx, dy, dz = x - c[0], y - c[1], z - c[2]
    if lesion.bank_index >= 0:
        core = _bank_fraction(lesion, dx, dy, dz, lesion.core_frac) if lesion.core_frac else None
        body = _bank_fraction(lesion, dx, dy, dz)
        return body, core if core is not None else np.zeros_like(body)
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    safe = np.maximum(dist, 1e-6)
    u = np.stack(np.broadcast_arrays(dx / safe, dy / safe, dz / safe), axis=-1)
    r = lesion.radius_along(u)
    edge = edge_fn(dz, safe)
    body = np.clip((r - dist) / edge + 0.5, 0.0, 1.0)
    core = np.clip((lesion.core_frac * r - dist) / edge + 0.5, 0.0, 1.0) if lesion.core_frac else np.zeros_like(body)
    for s in lesion.spicules:
        a, b = np.asarray(s.a), np.asarray(s.b)
        d = b - a
        t = np.clip(((x - a[0]) * d[0] + (y - a[1]) * d[1] + (z - a[2]) * d[2]) / float(d @ d), 0.0, 1.0)
        ex, ey, ez = x - a[0] - t * d[0], y - a[1] - t * d[1], z - a[2] - t * d[2]
        sd = np.sqrt(ex * ex + ey * ey + ez * ez)
        e = edge_fn(ez, np.maximum(sd, 1e-6))
        np.maximum(body, np.clip((s.ra + t * (s.rb - s.ra) - sd) / e + 0.5, 0.0, 1.0), out=body)
    return body, core
