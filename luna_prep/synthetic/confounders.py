"""What a threshold-and-shape nodule detector fires on in real chest CT besides nodules.

Blobs (rotated ellipsoids of soft tissue) and mucus-filled small airways, none annotated.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Blob:
    """A rotated ellipsoid of uniform HU; ``rotation`` rows are its axes in world (row-major 3x3)."""

    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    rotation: tuple[float, ...]
    hu: float
    kind: str
