"""Where the ``luna`` phantom's lesions go, and its LUNA16-like candidate list.

Lesions are isolated (inside a lung, off the vessels), juxta-pleural (reaching through the lung wall,
rendered and masked only inside the lung) or juxta-vascular (touching a vessel of at least 1 mm
radius), all off the confounders (lymph nodes, atelectasis, mucus-filled airways). Class-0 candidates
sit where a candidate detector fires in LUNA16: on vessels (bifurcations first), airway walls, the
pleura and the confounders.
"""

from __future__ import annotations

import numpy as np

from luna_prep.luna16.geometry import ScanGeometry
from luna_prep.synthetic.lesions import KINDS, LOCATIONS, SHAPES, Lesion, choose, luna16_diameter, make_lesion
from luna_prep.synthetic.phantom import LunaChest
from luna_prep.synthetic.trees import surface_distances

SEPARATION_MM = 5.0  # between two lesions' surfaces
CANDIDATE_MIX = {"bifurcation": 0.32, "vessel": 0.28, "airway": 0.15, "pleura": 0.15, "confounder": 0.07,
                 "parenchyma": 0.03}


def _center_for(rng, chest: LunaChest, location: str, r: float) -> np.ndarray | None:
    if location == "juxta-pleural":
        lung = chest.lungs[int(rng.integers(len(chest.lungs)))]
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        wall = np.asarray(lung.center) + np.asarray(lung.semi) * u  # rho = 1
        inward = (np.asarray(lung.center) - wall) / np.linalg.norm(np.asarray(lung.center) - wall)
        c = wall + inward * r * rng.uniform(0.6, 0.95)
        return c if chest.in_lung(c) else None
    if location == "juxta-vascular":
        big = [v for v in chest.vessels if v.rb >= 1.0]
        if not big:
            return None
        v = big[int(rng.integers(len(big)))]
        t = rng.random()
        axis = np.subtract(v.b, v.a) / v.length
        u = rng.standard_normal(3)
        u -= (u @ axis) * axis
        u /= np.linalg.norm(u)
        c = v.point(t) + u * (v.radius_at(t) + r * rng.uniform(0.6, 0.95))
        return c if chest.in_lung(c, r + 1.0) else None
    lung = chest.lungs[int(rng.integers(len(chest.lungs)))]
    c = lung.random_point(rng, 0.9)
    if not chest.in_lung(c, r + 2.0):
        return None
    return c if surface_distances(chest.vessels, c).min(initial=np.inf) > r + 1.5 else None


def _off_confounders(chest: LunaChest, c: np.ndarray, reach: float) -> bool:
    """Whether a lesion of this reach at c stays 2 mm off every blob and mucus-filled airway."""
    if any(np.linalg.norm(c - np.asarray(b.center)) < reach + max(b.semi) + 2.0 for b in chest.blobs):
        return False
    return surface_distances(chest.plugs, c).min(initial=np.inf) > reach + 2.0


def place_lesions(rng: np.random.Generator, geom: ScanGeometry, chest: LunaChest, n: int) -> list[Lesion]:
    """Up to n lesions, each inside the volume, at least SEPARATION_MM apart."""
    out: list[Lesion] = []
    lo, hi = geom.world_bounds()
    for _ in range(n):
        d = luna16_diameter(rng)
        kind, location, shape = choose(rng, KINDS), choose(rng, LOCATIONS), choose(rng, SHAPES)
        for _attempt in range(300):
            c = _center_for(rng, chest, location, d / 2)
            if c is None or np.any(c - d / 2 - 3 < lo) or np.any(c + d / 2 + 3 > hi):
                continue
            les = make_lesion(rng, c, d, kind, location, shape, chest.vessel_hu)
            if all(np.linalg.norm(c - np.asarray(o.center)) > les.reach + o.reach + SEPARATION_MM for o in out) \
                    and _off_confounders(chest, c, les.reach):
                out.append(les)
                break
    return out


def _vessel_point(rng, vessels, cdf: np.ndarray, forks: list) -> np.ndarray:
    """A point on a vessel's axis (chosen by length x radius: ``cdf``), or near a bifurcation (``forks``)."""
    if forks:
        return np.asarray(forks[int(rng.integers(len(forks)))]) + rng.normal(0.0, 0.3, 3)
    v = vessels[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(vessels) - 1)]
    return v.point(rng.random())


def bifurcations(vessels) -> list:
    """Points where a vessel splits: the ends of branches at which other branches start."""
    starts = {v.a for v in vessels}
    return [v.b for v in vessels if v.b in starts]


def _confounder_point(rng, chest: LunaChest) -> np.ndarray:
    things = (*chest.blobs, *chest.plugs)
    t = things[int(rng.integers(len(things)))]
    if hasattr(t, "semi"):
        return np.asarray(t.center) + rng.normal(0.0, 0.3 * min(t.semi), 3)
    return t.point(rng.random())


def _airway_wall_point(rng, chest: LunaChest) -> np.ndarray:
    a = chest.airways[1 + int(rng.integers(len(chest.airways) - 1))]
    t = rng.random()
    axis = np.subtract(a.b, a.a) / max(a.length, 1e-6)
    u = rng.standard_normal(3)
    u -= (u @ axis) * axis
    return a.point(t) + u / np.linalg.norm(u) * (a.radius_at(t) + 0.3)


def _pleura_point(rng, chest: LunaChest) -> np.ndarray:
    lung = chest.lungs[int(rng.integers(len(chest.lungs)))]
    u = rng.standard_normal(3)
    return np.asarray(lung.center) + np.asarray(lung.semi) * u / np.linalg.norm(u) * rng.uniform(0.93, 0.99)


def candidates(rng: np.random.Generator, chest: LunaChest, n0: int) -> list[tuple[np.ndarray, int]]:
    """Class 1 points within 1 mm of each lesion centre; n0 class-0 points off the lesions."""
    rows = []
    for les in chest.lesions:
        for _ in range(int(rng.integers(1, 4))):
            u = rng.standard_normal(3)
            rows.append((np.asarray(les.center) + u / np.linalg.norm(u) * rng.uniform(0.0, 0.9), 1))
    kinds = list(CANDIDATE_MIX)
    p = np.array([CANDIDATE_MIX[k] for k in kinds])
    cdf = np.cumsum([v.length * v.ra for v in chest.vessels])
    forks = bifurcations(chest.vessels)
    centres = np.array([les.center for les in chest.lesions]).reshape(-1, 3)
    keep_off = np.array([les.reach + 3.0 for les in chest.lesions])
    n_have = 0
    for kind in np.asarray(kinds)[rng.choice(len(kinds), size=50 * n0, p=p / p.sum())].tolist():
        if n_have == n0:
            break
        if kind in ("bifurcation", "vessel"):
            q = _vessel_point(rng, chest.vessels, cdf, forks if kind == "bifurcation" else [])
        elif kind == "airway":
            q = _airway_wall_point(rng, chest)
        elif kind == "pleura":
            q = _pleura_point(rng, chest)
        elif kind == "confounder":
            if not chest.blobs and not chest.plugs:
                continue
            q = _confounder_point(rng, chest)
        else:
            q = chest.lungs[int(rng.integers(len(chest.lungs)))].random_point(rng, 0.9)
        if chest.in_lung(q) and np.all(np.linalg.norm(centres - q, axis=1) > keep_off):
            rows.append((q, 0))
            n_have += 1
    return [rows[i] for i in rng.permutation(len(rows))]
