"""What a threshold-and-shape nodule detector fires on in real chest CT besides nodules (none annotated).

- **Hilar lymph nodes**: 0-2 per hilum, ovoid soft tissue of 5-12 mm within 2 mm of a vessel near
  the vessel roots.
- **Intrapulmonary (subpleural, perifissural) lymph nodes**: 0-3 per scan (0.75 on average), lentiform, 4-10 mm long,
  flat side to the pleura 1-6 mm under it, below the top third of the lung.
- **Linear (plate-like) atelectasis**: in 40 % of scans 1-2 thin bands of collapsed lung at the bases,
  10-40 mm wide, reaching 6-16 mm into the lung from the pleura.
- **Mucus-filled small airways with tree-in-bud**: in 40 % of scans 3-8 small airway branches of one
  region filled with soft tissue (no air lumen), each ending in a 2-4 mm centrilobular bud.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from luna_prep.synthetic.trees import TaperedTube, surface_distances

if TYPE_CHECKING:
    from luna_prep.synthetic.phantom import LunaChest

HILAR_PER_LUNG = (0, 2)
HILAR_MM = (5.0, 12.0)
INTRAPULMONARY_COUNTS = {0: 0.5, 1: 0.3, 2: 0.15, 3: 0.05}
INTRAPULMONARY_MM = (4.0, 10.0)
P_ATELECTASIS, P_TREE_IN_BUD = 0.4, 0.4
PLUGS = (3, 8)
BUD_MM = (2.0, 4.0)
TISSUE_HU = (20.0, 60.0)
KINDS = ("hilar node", "intrapulmonary node", "atelectasis", "bud")


@dataclass(frozen=True)
class Blob:
    """A rotated ellipsoid of uniform HU; ``rotation`` rows are its axes in world (row-major 3x3)."""

    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    rotation: tuple[float, ...]
    hu: float
    kind: str

    def rho(self, p) -> float:
        """Normalized radius (< 1 inside) of world point p."""
        r = np.asarray(self.rotation).reshape(3, 3)
        return float(np.linalg.norm(r @ (np.asarray(p, dtype=np.float64) - self.center) / np.asarray(self.semi)))


def _frame(rng: np.random.Generator, normal: np.ndarray) -> np.ndarray:
    """Rows: two random unit tangents perpendicular to ``normal``, then the normal."""
    n = normal / np.linalg.norm(normal)
    t = rng.standard_normal(3)
    t -= (t @ n) * n
    t /= np.linalg.norm(t)
    return np.stack([t, np.cross(n, t), n])


def _blob(center, semi, rot, hu, kind) -> Blob:
    return Blob(tuple(float(v) for v in center), tuple(float(v) for v in semi),
                tuple(float(v) for v in np.asarray(rot).ravel()), float(hu), kind)


def _wall_point(rng, lung, z_range) -> tuple[np.ndarray, np.ndarray]:
    """A point of the lung's wall whose normalized height lies in z_range, and its outward normal."""
    while True:
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        if z_range[0] <= u[2] <= z_range[1]:
            break
    semi = np.asarray(lung.semi)
    normal = u / semi
    return np.asarray(lung.center) + semi * u, normal / np.linalg.norm(normal)


def hilum(lung, lungs) -> np.ndarray:
    """Where a lung's vessel trees start: on its medial side, a little above its centre."""
    medial = 1.0 if lung.center[0] < np.mean([other.center[0] for other in lungs]) else -1.0
    return np.asarray(lung.center) + np.array([0.55 * medial * lung.semi[0], 0.0, 0.1 * lung.semi[2]])


def _hilar_nodes(rng, chest: LunaChest, out: list[Blob]) -> None:
    for lung in chest.lungs:
        h = hilum(lung, chest.lungs)
        for _ in range(int(rng.integers(HILAR_PER_LUNG[0], HILAR_PER_LUNG[1] + 1))):
            for _attempt in range(30):
                size = rng.uniform(*HILAR_MM)
                semi = size / 2 * np.array([1.0, rng.uniform(0.7, 0.9), rng.uniform(0.6, 0.8)])
                u = rng.standard_normal(3)
                c = h + u / np.linalg.norm(u) * rng.uniform(6.0, 18.0)
                gap = surface_distances(chest.vessels, c).min()  # beside a vessel, not in it
                if chest.in_lung(c, semi[0]) and 0.7 * semi[1] < gap < semi[0] + 2.0 and _apart(c, semi[0], out):
                    out.append(_blob(c, semi, _frame(rng, u), rng.uniform(*TISSUE_HU), "hilar node"))
                    break


def _apart(c, r, blobs: list[Blob], gap: float = 2.0) -> bool:
    return all(np.linalg.norm(c - np.asarray(b.center)) > r + max(b.semi) + gap for b in blobs)


def _intrapulmonary_nodes(rng, chest: LunaChest, out: list[Blob]) -> None:
    n = int(rng.choice(list(INTRAPULMONARY_COUNTS), p=list(INTRAPULMONARY_COUNTS.values())))
    for _ in range(n):
        for _attempt in range(30):
            lung = chest.lungs[int(rng.integers(len(chest.lungs)))]
            wall, normal = _wall_point(rng, lung, (-0.95, 0.3))
            length = rng.uniform(*INTRAPULMONARY_MM)
            semi = length / 2 * np.array([1.0, rng.uniform(0.65, 0.9), rng.uniform(0.4, 0.6)])
            c = wall - normal * (semi[2] + rng.uniform(1.0, 6.0))
            if chest.in_lung(c, semi[0]) and _apart(c, semi[0], out):
                out.append(_blob(c, semi, _frame(rng, normal), rng.uniform(*TISSUE_HU), "intrapulmonary node"))
                break


def _atelectasis(rng, chest: LunaChest, out: list[Blob]) -> None:
    if rng.random() >= P_ATELECTASIS:
        return
    for _ in range(int(rng.integers(1, 3))):
        lung = chest.lungs[int(rng.integers(len(chest.lungs)))]
        wall, normal = _wall_point(rng, lung, (-0.9, -0.4))
        rot = _frame(rng, normal)  # rows: tangent (width), tangent (thickness), normal (depth)
        semi = np.array([rng.uniform(5.0, 20.0), rng.uniform(0.8, 1.5), rng.uniform(3.0, 8.0)])
        c = wall - normal * 0.8 * semi[2]
        if chest.in_lung(c) and _apart(c, semi[0], out):
            out.append(_blob(c, semi, rot, rng.uniform(0.0, 40.0), "atelectasis"))


def _tree_in_bud(rng, chest: LunaChest, out: list[Blob]) -> list[TaperedTube]:
    if rng.random() >= P_TREE_IN_BUD:
        return []
    small = [a for a in chest.airways if a.depth >= 2 and a.rb <= 1.6]
    if not small:
        return []
    seed = np.asarray(small[int(rng.integers(len(small)))].b)
    near = sorted(small, key=lambda a: float(np.linalg.norm(np.asarray(a.b) - seed)))
    plugs = near[:int(rng.integers(PLUGS[0], PLUGS[1] + 1))]
    for a in plugs:
        r = rng.uniform(*BUD_MM) / 2
        d = np.subtract(a.b, a.a) / max(a.length, 1e-6)
        c = np.asarray(a.b) + d * 0.5 * r
        if chest.in_lung(c, r) and _apart(c, r, out, 0.0):
            out.append(_blob(c, (r, r, r), np.eye(3), rng.uniform(*TISSUE_HU), "bud"))
    return plugs


def sample_confounders(rng: np.random.Generator, chest: LunaChest) -> tuple[tuple[Blob, ...], tuple[TaperedTube, ...]]:
    """(blobs, mucus-filled airways) of a chest whose vessels and airways are grown."""
    blobs: list[Blob] = []
    _hilar_nodes(rng, chest, blobs)
    _intrapulmonary_nodes(rng, chest, blobs)
    _atelectasis(rng, chest, blobs)
    plugs = _tree_in_bud(rng, chest, blobs)
    return tuple(blobs), tuple(plugs)
