"""World (mm) <-> voxel geometry of a scan, as ITK defines it.

ITK maps a continuous voxel index i = (x, y, z) to world (physical, mm) coordinates as

    world = origin + D @ (spacing * i)

where D is the 3x3 direction matrix whose columns are the directions of the array axes.
Numpy arrays from SimpleITK are indexed [z, y, x]; everything here speaks (x, y, z) unless
a name says ``zyx``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class ScanGeometry:
    """Origin, spacing, direction and size of a scan, all in ITK's (x, y, z) order."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, as sitk.Image.GetDirection()
    size: tuple[int, int, int]

    @classmethod
    def from_image(cls, image: sitk.Image) -> ScanGeometry:
        return cls(
            origin=tuple(float(v) for v in image.GetOrigin()),
            spacing=tuple(float(v) for v in image.GetSpacing()),
            direction=tuple(float(v) for v in image.GetDirection()),
            size=tuple(int(v) for v in image.GetSize()),
        )

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def is_identity_direction(self) -> bool:
        return bool(np.allclose(self.direction_matrix, np.eye(3), atol=1e-6))

    def world_to_voxel(self, world_xyz) -> np.ndarray:
        """Continuous voxel index (x, y, z) of world points (..., 3) in mm."""
        p = np.asarray(world_xyz, dtype=np.float64)
        rel = p - np.asarray(self.origin)
        along_axes = rel @ np.linalg.inv(self.direction_matrix).T
        return along_axes / np.asarray(self.spacing)

    def voxel_to_world(self, voxel_xyz) -> np.ndarray:
        """World points (..., 3) in mm of continuous voxel indices (x, y, z)."""
        i = np.asarray(voxel_xyz, dtype=np.float64)
        return np.asarray(self.origin) + (i * np.asarray(self.spacing)) @ self.direction_matrix.T

    def contains_voxel(self, voxel_xyz, margin: float = 0.5) -> np.ndarray:
        """Whether continuous indices lie inside the volume (voxel centres +- ``margin``)."""
        i = np.asarray(voxel_xyz, dtype=np.float64)
        upper = np.asarray(self.size, dtype=np.float64) - 1 + margin
        return np.all((i >= -margin) & (i <= upper), axis=-1)

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned world box (min_xyz, max_xyz) around the centres of the corner voxels."""
        corners = np.array(
            [[x, y, z] for x in (0, self.size[0] - 1) for y in (0, self.size[1] - 1) for z in (0, self.size[2] - 1)],
            dtype=np.float64,
        )
        world = self.voxel_to_world(corners)
        return world.min(axis=0), world.max(axis=0)

    def to_dict(self) -> dict:
        return {
            "origin": list(self.origin),
            "spacing": list(self.spacing),
            "direction": list(self.direction),
            "size": list(self.size),
        }

    @classmethod
    def from_dict(cls, d: dict) -> ScanGeometry:
        return cls(
            origin=tuple(float(v) for v in d["origin"]),
            spacing=tuple(float(v) for v in d["spacing"]),
            direction=tuple(float(v) for v in d["direction"]),
            size=tuple(int(v) for v in d["size"]),
        )


def read_header_geometry(path: str | Path) -> ScanGeometry:
    """Geometry from an image header (.mhd, .nii.gz, ...) without reading the voxel data."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return ScanGeometry(
        origin=tuple(float(v) for v in reader.GetOrigin()),
        spacing=tuple(float(v) for v in reader.GetSpacing()),
        direction=tuple(float(v) for v in reader.GetDirection()),
        size=tuple(int(v) for v in reader.GetSize()),
    )
