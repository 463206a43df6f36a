"""Branching, tapering tube trees in world mm: pulmonary vessels from each hilum, and the airways.

A tree is grown from a root (point, direction, radius): each branch is a straight tapered segment
about ``LENGTH_PER_RADIUS`` radii long; at its end it splits into a major child (slightly thinner,
small turn) and a minor child (much thinner, large turn), until the radius falls under the tree's
minimum. Branches that would leave the lung are turned back toward a random interior point, or end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LENGTH_PER_RADIUS = (5.0, 9.0)
TAPER = 0.92  # radius at a branch's end / at its start
MAJOR_RATIO = (0.85, 0.95)  # major child's start radius / parent's end radius
MINOR_RATIO = (0.55, 0.8)
MAJOR_TURN_DEG = (8.0, 25.0)
MINOR_TURN_DEG = (35.0, 65.0)
MAX_SEGMENTS = 4000  # per tree: a safety bound, far above what the radius rule gives


@dataclass(frozen=True)
class TaperedTube:
    """A straight segment a -> b whose radius goes linearly from ra to rb (world mm)."""

    a: tuple[float, float, float]
    b: tuple[float, float, float]
    ra: float
    rb: float
    depth: int  # branching generation, 0 at the root

    @property
    def length(self) -> float:
        return float(np.linalg.norm(np.subtract(self.b, self.a)))

    def point(self, t: float) -> np.ndarray:
        return np.asarray(self.a) + t * (np.asarray(self.b) - np.asarray(self.a))

    def radius_at(self, t: float) -> float:
        return self.ra + t * (self.rb - self.ra)

    def distance(self, p) -> float:
        """Distance of world point p to the tube's surface (negative inside)."""
        a, b, p = np.asarray(self.a), np.asarray(self.b), np.asarray(p, dtype=np.float64)
        d = b - a
        t = float(np.clip((p - a) @ d / max(float(d @ d), 1e-12), 0.0, 1.0))
        return float(np.linalg.norm(p - (a + t * d))) - self.radius_at(t)


def _turn(rng: np.random.Generator, d: np.ndarray, angle_deg: float) -> np.ndarray:
    """Unit vector at ``angle_deg`` from unit vector d, around a random axis."""
    return np.asarray(_turn3(rng, tuple(float(v) for v in d), angle_deg))


def _turn3(rng: np.random.Generator, d: tuple[float, float, float], angle_deg: float) -> tuple[float, float, float]:
    """``_turn`` in plain floats (called twice for every branch a tree grows)."""
    u0, u1, u2 = rng.standard_normal(3).tolist()
    k = u0 * d[0] + u1 * d[1] + u2 * d[2]
    u0, u1, u2 = u0 - k * d[0], u1 - k * d[1], u2 - k * d[2]
    n = math.sqrt(u0 * u0 + u1 * u1 + u2 * u2)
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a) / n
    return c * d[0] + s * u0, c * d[1] + s * u1, c * d[2] + s * u2


def _unit(v) -> tuple[float, float, float]:
    n = math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
    return v[0] / n, v[1] / n, v[2] / n


@dataclass(frozen=True)
class TreeSpec:
    root: tuple[float, float, float]
    direction: tuple[float, float, float]
    radius: float
    min_radius: float


def grow_tree(rng: np.random.Generator, spec: TreeSpec, inside: Callable[[np.ndarray], bool],
              interior_point: Callable[[], np.ndarray]) -> list[TaperedTube]:
    """The segments of one tree; ``inside(p)`` says whether p may hold a branch."""
    out: list[TaperedTube] = []
    stack = [(tuple(float(v) for v in spec.root), _unit([float(v) for v in spec.direction]), spec.radius, 0)]
    while stack and len(out) < MAX_SEGMENTS:
        p, d, r, depth = stack.pop()
        if r < spec.min_radius:
            continue
        length = r * rng.uniform(*LENGTH_PER_RADIUS)
        end = None
        for _attempt in range(4):
            q = (p[0] + length * d[0], p[1] + length * d[1], p[2] + length * d[2])
            if inside(q) and inside((p[0] + 0.5 * length * d[0], p[1] + 0.5 * length * d[1],
                                     p[2] + 0.5 * length * d[2])):
                end = q
                break
            t = _unit([float(v) - c for v, c in zip(interior_point(), p)])
            d = _unit([d[0] + 1.5 * t[0], d[1] + 1.5 * t[1], d[2] + 1.5 * t[2]])
            length *= 0.8
        if end is None:
            continue
        rb = r * TAPER
        out.append(TaperedTube(p, end, float(r), float(rb), depth))
        stack.append((end, _turn3(rng, d, rng.uniform(*MAJOR_TURN_DEG)), rb * rng.uniform(*MAJOR_RATIO), depth + 1))
        stack.append((end, _turn3(rng, d, rng.uniform(*MINOR_TURN_DEG)), rb * rng.uniform(*MINOR_RATIO), depth + 1))
    return out


def surface_distances(tubes: list[TaperedTube] | tuple[TaperedTube, ...], p) -> np.ndarray:
    """Distance of world point p to each tube's surface (negative inside), vectorized."""
    if not tubes:
        return np.empty(0)
    a = np.array([t.a for t in tubes])
    d = np.array([t.b for t in tubes]) - a
    ra, rb = np.array([t.ra for t in tubes]), np.array([t.rb for t in tubes])
    rel = np.asarray(p, dtype=np.float64)[None, :] - a
    t = np.clip(np.einsum("ij,ij->i", rel, d) / np.maximum(np.einsum("ij,ij->i", d, d), 1e-12), 0.0, 1.0)
    return np.linalg.norm(rel - t[:, None] * d, axis=1) - (ra + t * (rb - ra))
