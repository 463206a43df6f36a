"""Real nodule shapes: the LIDC-IDRI readers' outlines of the nodules of two LUNA16 scans.

``lidc_shapes.npz`` (next to this module) holds one boolean (z, y, x) mask per reader and nodule,
with its voxel spacing (x, y, z mm), rasterized by :mod:`luna_prep.luna16.lidc` from
``tests/data/lidc_two_scans.sqlite`` (see tests/data/README.md for that extract's provenance). The
outlines are LIDC-IDRI data (Armato et al., Med. Phys. 38:915-931, 2011; TCIA,
doi:10.7937/K9/TCIA.2015.LO9QL9SX), licensed CC BY 3.0: "The authors acknowledge the National Cancer
Institute and the Foundation for the National Institutes of Health and their critical role in the
creation of the free publicly available LIDC/IDRI Database used in this study." Rebuild with

    python -m luna_prep.synthetic.shape_bank tests/data/lidc_two_scans.sqlite tests/data/headers
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from pathlib import Path

import numpy as np

BANK = Path(__file__).with_name("lidc_shapes.npz")


@dataclass(frozen=True)
class BankShape:
    mask: np.ndarray  # bool (z, y, x)
    spacing: tuple[float, float, float]  # x, y, z mm
    source: str  # seriesuid, nodule and reader

    @cached_property
    def equivalent_diameter_mm(self) -> float:
        return float((6.0 * self.mask.sum() * np.prod(self.spacing) / np.pi) ** (1.0 / 3.0))

    @cached_property
    def centroid_zyx(self) -> np.ndarray:
        return np.argwhere(self.mask).mean(axis=0)

    @cached_property
    def reach_mm(self) -> float:
        """Largest distance of a mask voxel from the centroid, plus one voxel."""
        rel = (np.argwhere(self.mask) - self.centroid_zyx) * np.asarray(self.spacing)[::-1]
        return float(np.linalg.norm(rel, axis=1).max() + max(self.spacing))


@cache
def smoothed(index: int) -> np.ndarray:
    """Bank shape ``index`` as float32 in [0, 1], Gaussian-smoothed by half a voxel: a fraction to
    interpolate, 0.5 on its surface."""
    from scipy import ndimage

    return ndimage.gaussian_filter(load_shape_bank()[index].mask.astype(np.float32), 0.5, mode="constant")


@lru_cache(maxsize=1)
def load_shape_bank() -> tuple[BankShape, ...]:
    with np.load(BANK) as f:
        n = int(f["n"])
        return tuple(BankShape(f[f"mask{i}"].astype(bool), tuple(float(v) for v in f[f"spacing{i}"]),
                               str(f[f"source{i}"])) for i in range(n))


def extract(db: Path, headers: Path, min_slices: int = 5) -> list[BankShape]:
    """Every reader's mask, over at least ``min_slices`` slices, of the scans in ``headers``
    (thinner ones are too coarse along z to be scaled to other sizes)."""
    from luna_prep.luna16.geometry import read_header_geometry
    from luna_prep.luna16.lidc import LidcDatabase

    out = []
    for mhd in sorted(headers.glob("*.mhd")):
        geom = read_header_geometry(mhd)
        for k, readers in enumerate(LidcDatabase(db).reader_masks(mhd.stem, geom)):
            for r, (_lo, mask) in enumerate(readers):
                if mask.shape[0] >= min_slices:
                    out.append(BankShape(mask, geom.spacing, f"{mhd.stem} nodule {k} reader {r}"))
    return out


def save(shapes: list[BankShape], path: Path = BANK) -> None:
    arrays = {"n": np.array(len(shapes))}
    for i, s in enumerate(shapes):
        arrays |= {f"mask{i}": s.mask, f"spacing{i}": np.array(s.spacing), f"source{i}": np.array(s.source)}
    np.savez_compressed(path, **arrays)


if __name__ == "__main__":
    save(extract(Path(sys.argv[1]), Path(sys.argv[2])))
    for s in load_shape_bank.__wrapped__():
        print(s.source, s.mask.shape, round(s.equivalent_diameter_mm, 1))
