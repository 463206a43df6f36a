"""The ``luna`` digital chest phantom: LUNA16-like geometry and anatomy in world mm.

World axes are ITK's LPS: +x patient left, +y posterior, +z superior. The scan reaches from just
above the lung apices into the upper abdomen, where stomach and colon gas lie under the lung bases
(separated from them by the diaphragm). Lungs are ellipsoids indented by the heart and its fat;
vessel trees branch from each hilum and airway trees from the carina (see ``trees``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.synthetic.anatomy import Ellipsoid
from luna_prep.synthetic.confounders import Blob, hilum, sample_confounders
from luna_prep.synthetic.lesions import Lesion
from luna_prep.synthetic.trees import TaperedTube, TreeSpec, grow_tree

# LUNA16's slice spacings (mm) and roughly how often they occur among its 888 scans.
SLICE_SPACINGS = {0.625: 0.12, 0.7: 0.05, 1.0: 0.1, 1.25: 0.3, 1.8: 0.05, 2.0: 0.08, 2.5: 0.3}
IN_PLANE_MM = (0.7, 0.08, 0.5, 0.98)  # normal mean, sd, clipped to [lo, hi]
REAL_FOV_MM = 360.0  # in-plane field of view the anatomy's absolute sizes are made for
VESSEL_ROOT_RADIUS_MM = 4.0
VESSEL_MIN_RADIUS_MM = 0.45  # branches start at >= 0.9 mm across and end at >= 0.83 mm: under 1 mm
AIRWAY_ROOT_RADIUS_MM = 5.0
AIRWAY_MIN_RADIUS_MM = 0.8
TRACHEA_RADIUS_MM = 8.0


@dataclass(frozen=True)
class LunaChest:
    body_center: tuple[float, float]
    body_semi: tuple[float, float]
    fat_frac: float
    bone_ring: tuple[float, float]
    rib_period_mm: float
    rib_phase_mm: float
    lungs: tuple[Ellipsoid, ...]
    heart: Ellipsoid
    heart_fat: Ellipsoid  # pericardial and mediastinal fat around the heart
    gas: tuple[Ellipsoid, ...]  # stomach and colon gas below the diaphragm
    emphysema: tuple[Ellipsoid, ...]
    vessels: tuple[TaperedTube, ...]
    airways: tuple[TaperedTube, ...]
    lesions: tuple[Lesion, ...]
    lung_hu: float
    vessel_hu: float
    noise_sigma: float
    slice_mm: float  # partial-volume width across slices
    fov_clip: bool
    blobs: tuple[Blob, ...] = ()  # lymph nodes and other nodule-like findings that are not nodules
    plugs: tuple[TaperedTube, ...] = ()  # mucus-filled small airways (soft tissue, no lumen)

    def in_lung(self, p, margin: float = 0.0) -> bool:
        """Whether world point p is lung parenchyma, at least about ``margin`` mm from its wall."""
        x, y, z = (float(v) for v in p)
        if _rho(self.heart_fat, x, y, z) < 1.0 + margin / min(self.heart_fat.semi):
            return False
        return any(_rho(lung, x, y, z) < 1.0 - margin / min(lung.semi) for lung in self.lungs)


def _rho(e: Ellipsoid, x: float, y: float, z: float) -> float:
    """``Ellipsoid.rho`` of one point in plain floats (called for every branch a tree grows)."""
    (cx, cy, cz), (a, b, c) = e.center, e.semi
    return math.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2)


def sample_geometry(rng: np.random.Generator, full_size: bool, direction) -> ScanGeometry:
    """512 (full size) or 192 in-plane voxels; LUNA16-like spacings; 280-360 mm (130-170 mm) long."""
    mean, sd, lo_mm, hi_mm = IN_PLANE_MM
    s_xy = round(float(np.clip(rng.normal(mean, sd), lo_mm, hi_mm)), 6)
    names = list(SLICE_SPACINGS)
    p = np.array([SLICE_SPACINGS[k] for k in names])
    s_z = float(names[int(rng.choice(len(names), p=p / p.sum()))])
    n_xy, extent = (512, rng.uniform(280.0, 360.0)) if full_size else (192, rng.uniform(130.0, 170.0))
    spacing = np.array([s_xy, s_xy, s_z])
    size = np.array([n_xy, n_xy, int(np.ceil(extent / s_z))])
    lo = np.round([rng.uniform(-250, -150), rng.uniform(-250, -150), rng.uniform(-400, -100)], 3)
    d = np.asarray(direction).reshape(3, 3)
    origin = lo - np.minimum(d * (spacing * (size - 1))[None, :], 0.0).sum(axis=1)
    return ScanGeometry(tuple(float(v) for v in np.round(origin, 6)), tuple(float(v) for v in spacing),
                        tuple(float(v) for v in direction), tuple(int(v) for v in size))


def _lungs_and_mediastinum(rng, lo, hi, body_center, a, b):
    ext = hi - lo
    lung_z = 0.36 * ext[2] * rng.uniform(0.95, 1.0)
    zc = hi[2] - 0.04 * ext[2] - lung_z
    lungs = []
    for side in (-1.0, 1.0):
        cx = 0.44 * side * rng.uniform(0.97, 1.03)
        sa, sb = 0.33 * rng.uniform(0.95, 1.05), 0.6 * rng.uniform(0.95, 1.05)
        lungs.append(Ellipsoid((body_center[0] + cx * a, body_center[1] + 0.02 * b, zc), (sa * a, sb * b, lung_z)))
    hz = 0.42 * lung_z
    heart = Ellipsoid((body_center[0] + 0.1 * a, body_center[1] - 0.22 * b, zc - 0.5 * lung_z),
                      (0.27 * a * rng.uniform(0.9, 1.1), 0.33 * b * rng.uniform(0.9, 1.1), hz))
    heart_fat = Ellipsoid(heart.center, tuple(s * 1.15 for s in heart.semi))
    return tuple(lungs), heart, heart_fat


def _gas(rng, lungs, a, b, body_center, scale) -> tuple[Ellipsoid, ...]:
    """Stomach gas under the left lung base, colon gas under both, 4-12 mm below the lung surface."""
    left = max(lungs, key=lambda e: e.center[0])
    out = []
    spots = [(left, 0.1, -0.1, (40.0, 30.0, 22.0))]
    spots += [(lung, rng.uniform(-0.2, 0.2), rng.uniform(-0.55, -0.2), (22.0, 16.0, 14.0))
              for lung in lungs for _ in range(int(rng.integers(1, 3)))]
    for lung, fx, fy, semi in spots:
        s = tuple(v * scale * rng.uniform(0.7, 1.2) for v in semi)
        x, y = lung.center[0] + fx * lung.semi[0], lung.center[1] + fy * lung.semi[1]
        q = 1.0 - ((x - lung.center[0]) / lung.semi[0]) ** 2 - ((y - lung.center[1]) / lung.semi[1]) ** 2
        base = lung.center[2] - lung.semi[2] * np.sqrt(max(q, 0.0))
        out.append(Ellipsoid((x, y, base - rng.uniform(4.0, 12.0) - s[2]), s))
    return tuple(e for e in out if ((e.center[0] - body_center[0]) / a) ** 2
                 + ((e.center[1] - body_center[1]) / b) ** 2 < 0.6)


def _vessel_trees(rng, chest_lungs, in_lung, scale) -> list[TaperedTube]:
    out = []
    for lung in chest_lungs:
        medial = 1.0 if lung.center[0] < np.mean([other.center[0] for other in chest_lungs]) else -1.0
        root = hilum(lung, chest_lungs)
        for d in ((0.0, 0.0, 1.0), (-medial, -0.6, 0.3), (-medial, 0.6, 0.0), (-medial, -0.4, -0.6), (0.0, 0.3, -1.0)):
            spec = TreeSpec(tuple(root + rng.normal(0.0, 2.0, 3)), d,
                            VESSEL_ROOT_RADIUS_MM * max(scale, 0.6) * rng.uniform(0.85, 1.1), VESSEL_MIN_RADIUS_MM)
            out += grow_tree(rng, spec, lambda p: in_lung(p, 1.0), lambda lung=lung: lung.random_point(rng, 0.85))
    return out


def _airway_trees(rng, lungs, in_lung, body_center, b, top_z, scale) -> list[TaperedTube]:
    carina = np.array([body_center[0], body_center[1] - 0.05 * b, lungs[0].center[2] + 0.3 * lungs[0].semi[2]])
    r_t = TRACHEA_RADIUS_MM * scale
    out = [TaperedTube((carina[0], carina[1], top_z), tuple(carina), r_t, r_t, 0)]
    for lung in lungs:
        bronchus_end = np.asarray(lung.center) + np.array([0.6 * np.sign(carina[0] - lung.center[0]) * lung.semi[0],
                                                           0, 0.15 * lung.semi[2]])
        r_main = AIRWAY_ROOT_RADIUS_MM * scale
        out.append(TaperedTube(tuple(carina), tuple(bronchus_end), 0.8 * r_t, r_main, 0))
        for d in ((0.0, 0.2, 1.0), (np.sign(lung.center[0] - carina[0]), 0.0, -0.2), (0.0, 0.2, -1.0)):
            spec = TreeSpec(tuple(bronchus_end), d, 0.8 * r_main,
                            max(AIRWAY_MIN_RADIUS_MM, 0.3 * scale * AIRWAY_ROOT_RADIUS_MM))
            out += grow_tree(rng, spec, lambda p: in_lung(p, 2.0), lambda lung=lung: lung.random_point(rng, 0.8))
    return out


def sample_chest(rng: np.random.Generator, geom: ScanGeometry, fov_clip: bool) -> LunaChest:
    """Everything but the lesions (``lesions`` is empty; see ``findings.place_lesions``)."""
    lo, hi = geom.world_bounds()
    ext, ctr = hi - lo, (lo + hi) / 2
    fov = min(ext[0], ext[1])
    scale = fov / REAL_FOV_MM
    a = fov * rng.uniform(0.40, 0.45)
    b = a * rng.uniform(0.70, 0.80)
    body_center = (ctr[0] + rng.uniform(-0.03, 0.03) * fov, ctr[1] + rng.uniform(-0.03, 0.03) * fov)
    lungs, heart, heart_fat = _lungs_and_mediastinum(rng, lo, hi, body_center, a, b)
    chest = LunaChest(body_center, (a, b), rng.uniform(0.04, 0.07), (0.88, 0.94), rng.uniform(22.0, 30.0),
                      rng.uniform(0.0, 30.0), lungs, heart, heart_fat, _gas(rng, lungs, a, b, body_center, scale),
                      (), (), (), (), float(rng.uniform(-880.0, -820.0)), float(rng.uniform(25.0, 60.0)),
                      float(rng.uniform(15.0, 60.0)), geom.spacing[2], fov_clip)
    severity = rng.choice([0, 4, 15], p=[0.5, 0.3, 0.2])
    emph = []
    for _ in range(int(severity)):
        lung = lungs[int(rng.integers(len(lungs)))]
        emph.append(Ellipsoid(tuple(lung.random_point(rng, 0.85)), tuple(rng.uniform(3.0, 12.0, 3) * max(scale, 0.5))))
    vessels = _vessel_trees(rng, lungs, chest.in_lung, scale)
    airways = _airway_trees(rng, lungs, chest.in_lung, body_center, b, hi[2], scale)
    chest = replace(chest, emphysema=tuple(emph), vessels=tuple(vessels), airways=tuple(airways))
    blobs, plugs = sample_confounders(rng, chest)
    return replace(chest, blobs=blobs, plugs=plugs)
